"""The bench's statistics against known inputs, and the workload file's presets."""

import json
import math

import pytest

from tasks.libs.bench import report as bench_report
from tasks.libs.bench.stats import (
    cell_stats,
    compare_cells,
    evaluate_targets,
    footprint_stats,
    mlflow_vs_raw,
    paired_ratios,
    percentile,
    ratio,
    ratio_summary,
    summarize,
    worst_cell,
)
from tasks.libs.bench.workload import OPS, SpecError, load_spec


@pytest.mark.parametrize(
    "values, q, expected",
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4, 5], 50, 3),
        ([5, 1, 4, 2, 3], 0, 1),
        ([5, 1, 4, 2, 3], 100, 5),
        ([7], 99, 7),
        (list(range(1, 101)), 95, 95.05),
        (list(range(1, 101)), 99, 99.01),
        ([10, 20], 25, 12.5),
    ],
)
def test_percentile_interpolates_between_ranks(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_matches_numpy_default():
    np = pytest.importorskip("numpy")
    data = [0.013, 0.2, 0.011, 0.5, 0.07, 0.0123, 0.9, 0.05, 0.033]
    for q in (50, 95, 99):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))


def test_percentile_edge_cases():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summarize_reports_milliseconds():
    s = summarize([0.010, 0.020, 0.030, 0.040])
    assert s["n"] == 4
    assert s["p50_ms"] == pytest.approx(25.0)
    assert s["mean_ms"] == pytest.approx(25.0)
    assert s["max_ms"] == pytest.approx(40.0)
    assert math.isnan(summarize([])["p50_ms"])


def test_ratio_refuses_what_cannot_be_divided():
    assert ratio(10, 4) == 2.5
    assert math.isnan(ratio(1, 0))
    assert math.isnan(ratio(math.nan, 1))
    assert math.isnan(ratio(None, 1))


def test_paired_ratios_go_pair_by_pair():
    assert paired_ratios([10, 20, 30], [5, 10, 0]) == [2.0, 2.0]
    with pytest.raises(ValueError):
        paired_ratios([1, 2], [1])
    s = ratio_summary(50, 10, [40, 60], [10, 10])
    assert s["value"] == 5 and s["paired"] == [4, 6]
    assert (s["paired_min"], s["paired_median"], s["paired_max"]) == (4, 5, 6)


def _rep(latencies_ms, throughput, errors=0):
    return {"latencies": [x / 1000 for x in latencies_ms], "throughput": throughput, "errors": errors}


def test_cell_stats_pools_repetitions():
    cell = cell_stats([_rep([10, 20], 100, 1), _rep([30, 40], 50), _rep([50], 80)])
    assert cell["n"] == 5 and cell["errors"] == 1
    assert cell["p50_ms"] == pytest.approx(30)
    assert cell["throughput"] == 80  # median over repetitions
    assert cell["rep_p50_ms"] == pytest.approx([15, 35, 50])


def _cells():
    return {
        ("sqlite", "tuned", 1, "log_metric"): cell_stats([_rep([10] * 5, 100), _rep([12] * 5, 90)]),
        ("sqlite", "stock", 1, "log_metric"): cell_stats([_rep([50] * 5, 20), _rep([48] * 5, 21)]),
        ("sqlite", "tuned", 8, "log_metric"): cell_stats([_rep([40] * 5, 300)]),
        ("sqlite", "stock", 8, "log_metric"): cell_stats([_rep([90] * 5, 150)]),
        ("sqlite", "tuned", 1, "log_batch_1000"): cell_stats([_rep([100] * 3, 10)]),
        ("sqlite", "stock", 1, "log_batch_1000"): cell_stats([_rep([110] * 3, 9)]),
        ("postgres", "tuned", 1, "log_metric"): cell_stats([_rep([20] * 5, 50), _rep([20] * 5, 50)]),
    }


def test_compare_cells_pairs_twins_only():
    rows = compare_cells(_cells(), key_a={"setup": "tuned"}, key_b={"setup": "stock"}, label="tuned vs stock")
    by = {(r["backend"], r["clients"], r["op"]): r for r in rows}
    assert set(by) == {("sqlite", 1, "log_metric"), ("sqlite", 8, "log_metric"), ("sqlite", 1, "log_batch_1000")}
    one = by[("sqlite", 1, "log_metric")]
    assert one["p50_ratio"] == pytest.approx(49 / 11)  # pooled p50s: 49 ms vs 11 ms
    assert one["p50_paired"] == pytest.approx([5.0, 4.0])  # rep 1: 50/10, rep 2: 48/12
    assert by[("sqlite", 8, "log_metric")]["throughput_ratio"] == pytest.approx(2.0)
    pg = compare_cells(_cells(), key_a={"backend": "postgres"}, key_b={"backend": "sqlite"}, label="pg vs sqlite")
    assert len(pg) == 1 and pg[0]["p50_ratio"] == pytest.approx(11 / 20)


def _footprint():
    mb = 2**20
    return {
        ("sqlite", "tuned"): footprint_stats([6.0, 5.0, 7.0], [900 * mb, 1000 * mb], [500 * mb], 1200 * mb),
        ("sqlite", "stock"): footprint_stats([12.0, 10.0, 11.0], [3000 * mb, 3100 * mb], [2000 * mb], 3300 * mb),
    }


def test_targets_met_and_missed():
    found = evaluate_targets(_cells(), ["sqlite", "postgres"], _footprint())
    targets = {(t["backend"], t["measure"], t["op"], t["clients"]): t for t in found}
    metric1 = targets[("sqlite", "p50", "log_metric", 1)]
    assert metric1["value"] == pytest.approx(49 / 11) and metric1["met"]  # >= 2x
    assert ("sqlite", "p50", "log_batch_1000", 1) not in targets  # the four targets only
    missing = targets[("postgres", "p50", "log_metric", 1)]  # no stock twin
    assert math.isnan(missing["value"]) and not missing["met"]
    ready = targets[("sqlite", "ready", None, None)]
    assert ready["value"] == pytest.approx(6 / 11) and ready["met"] and ready["direction"] == "<="  # <= 0.6x
    memory = targets[("sqlite", "memory", None, None)]
    assert memory["value"] == pytest.approx(950 / 3050) and memory["met"]  # <= 0.5x
    assert math.isnan(targets[("postgres", "ready", None, None)]["value"])  # not measured


def test_every_cell_target_names_the_worst_cell():
    cells = _cells()
    value, where = worst_cell(cells, "sqlite")
    # log_batch_1000: p50 110/100 = 1.1, calls/s 10/9 = 1.11; log_metric cells are all better
    assert value == pytest.approx(1.1) and where == "log_batch_1000 x1 p50"
    cells[("sqlite", "tuned", 8, "log_metric")] = cell_stats([_rep([40] * 5, 120)])  # 120 < 150 calls/s
    targets = {t["measure"]: t for t in evaluate_targets(cells, ["sqlite"])}
    assert targets["every_cell"]["value"] == pytest.approx(0.8) and not targets["every_cell"]["met"]
    assert targets["every_cell"]["where"] == "log_metric x8 calls/s"
    few = {t["measure"]: t for t in evaluate_targets(cells, ["sqlite"], repetitions=2)}["every_cell"]
    assert math.isnan(few["value"]) and not few["met"] and few["where"] == "needs 3+ repetitions, ran 2"


def test_footprint_medians():
    stats = _footprint()[("sqlite", "tuned")]
    assert stats["ready_median_s"] == 6.0 and stats["idle_rss_median"] == 950 * 2**20
    assert stats["peak_rss"] == 1200 * 2**20
    assert math.isnan(footprint_stats([], [], [], 0)["ready_median_s"])


def test_mlflow_vs_raw_uses_rows_per_second():
    raw = [
        {"backend": "sqlite", "store": "tuned", "mode": "1 row/commit", "rows_per_s": 1000.0},
        {"backend": "sqlite", "store": "tuned", "mode": "1000 rows/commit", "rows_per_s": 100_000.0},
    ]
    rows = {r["what"]: r for r in mlflow_vs_raw(_cells(), raw)}
    assert rows["log_metric, 1 client(s)"]["mlflow_over_raw"] == pytest.approx(95 / 1000)
    assert rows["log_metric, 8 client(s)"]["mlflow_over_raw"] == pytest.approx(0.3)
    assert rows["log_batch(1000), 1 client"]["mlflow_rows_per_s"] == pytest.approx(10_000)
    assert rows["log_batch(1000), 1 client"]["mlflow_over_raw"] == pytest.approx(0.1)


def test_compare_reads_two_documents(tmp_path):
    def doc(p50, tp):
        return {
            "meta": {"preset": "quick", "started_at": "2026-01-01T00:00:00"},
            "cells": [
                {
                    "backend": "sqlite",
                    "setup": "tuned",
                    "clients": 1,
                    "op": "log_metric",
                    "p50_ms": p50,
                    "throughput": tp,
                    "errors": 0,
                }
            ],
        }

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(doc(10.0, 100.0)))
    rows = bench_report.compare(bench_report.load_results(tmp_path / "a"), doc(5.0, None))
    assert rows == [["sqlite", "tuned", 1, "log_metric", "10.0", "5.0", "0.50", "100.0", "-", "-", "0/0"]]
    with pytest.raises(FileNotFoundError):
        bench_report.load_results(tmp_path / "missing")


def test_compare_and_report_show_start_up_and_memory(tmp_path):
    mb = 2**20
    a = {
        "footprint": [
            {
                "backend": "sqlite",
                "setup": "tuned",
                "ready_median_s": 8.0,
                "idle_rss_median": 1000 * mb,
                "peak_rss": 2000 * mb,
            }
        ]
    }
    b = {
        "footprint": [
            {
                "backend": "sqlite",
                "setup": "tuned",
                "ready_median_s": 4.0,
                "idle_rss_median": 500 * mb,
                "peak_rss": 1000 * mb,
            }
        ]
    }
    assert bench_report.compare_footprint(a, b) == [
        ["sqlite", "tuned", "8.0", "4.0", "0.50", "1,000", "500", "0.50", "2,000", "1,000", "0.50"]
    ]
    doc = {"footprint": [{"backend": "sqlite", "setup": "tuned", **_footprint()[("sqlite", "tuned")]}]}
    assert bench_report.footprint_rows(doc) == [["sqlite", "tuned", "6.0", "6.0 5.0 7.0", "950", "500", "1,200"]]


def test_presets_load_and_cover_every_operation():
    for name in ("quick", "full"):
        spec = load_spec(name)
        assert spec.clients == [1, 4, 8]
        assert all(spec.ops[op] >= 1 for op in OPS)
        assert spec.repetitions >= 2
    with pytest.raises(SpecError, match="unknown preset 'fast'"):
        load_spec("fast")


def test_spec_refuses_unknown_operations(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(
        "presets:\n  x:\n    repetitions: 1\n    clients: [1]\n    seed_runs: 1\n    ops: {log_metrics: 3}\n"
    )
    with pytest.raises(SpecError, match="unknown operation"):
        load_spec("x", path)


def test_concurrent_cells_use_concurrent_ops_when_the_preset_has_them():
    spec = load_spec("quick")
    assert spec.ops_for(1) == spec.ops
    assert spec.ops_for(8) == spec.concurrent_ops and spec.concurrent_ops["log_model_sklearn"] == 0
    assert spec.scaled(concurrent_ops=None).ops_for(8) == spec.ops


def test_worst_cell_says_how_busy_the_machine_was():
    cells = _cells()
    cells[("sqlite", "tuned", 8, "log_metric")] = cell_stats([{**_rep([40] * 5, 120), "cpu_busy": 0.97}])
    cells[("sqlite", "stock", 8, "log_metric")] = cell_stats(
        [{**_rep([90] * 5, 150), "cpu_busy": 0.9}, {**_rep([90] * 5, 150), "cpu_busy": 1.0}]
    )
    _, where = worst_cell(cells, "sqlite")
    assert where == "log_metric x8 calls/s; CPU 97%/95% busy"  # stock: median of 90% and 100%
    row = next(
        r
        for r in bench_report.timing_rows(
            {
                "cells": [
                    {"backend": b, "setup": s, "clients": c, "op": op, **cell} for (b, s, c, op), cell in cells.items()
                ]
            }
        )
        if r[:3] == ["sqlite", 8, "log_metric"]
    )
    assert row[8] == "97%" and row[15] == "95%"
    assert (
        bench_report.timing_rows(
            {
                "cells": [
                    {
                        "backend": "sqlite",
                        "setup": "tuned",
                        "clients": 1,
                        "op": "log_metric",
                        **cells[("sqlite", "tuned", 1, "log_metric")],
                    }
                ]
            }
        )[0][7]
        == "-"
    )  # no reading (an older results file): no figure


def test_phase_cpu_busy_spans_first_start_to_last_end():
    from tasks.libs.bench.workload import phase_cpu_busy

    parts = [
        {"span": (10.0, 12.0), "cpu": ((100.0, 200.0), (103.0, 204.0))},
        {"span": (10.5, 13.0), "cpu": ((101.0, 201.0), (108.0, 210.0))},  # ends last
        {"span": (9.5, 11.0), "cpu": ((99.0, 198.0), (101.0, 200.0))},  # starts first
    ]
    assert phase_cpu_busy(parts) == pytest.approx((108 - 99) / (210 - 198))
    assert phase_cpu_busy([{"span": None, "cpu": None}]) is None
