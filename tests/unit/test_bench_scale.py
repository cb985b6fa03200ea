"""The scale bench's pure parts: the rows it loads, server CPU per call, its targets and its tables."""

from __future__ import annotations

import math

import pytest

from tasks.libs.bench import scale_report
from tasks.libs.bench.runner import Target
from tasks.libs.bench.scale_seed import COLUMNS, run_rows
from tasks.libs.bench.scale_spec import ScaleSpec, ScaleTarget, scale_targets
from tasks.libs.bench.stats import server_cpu_ms_per_call
from tasks.libs.core.errors import UserError
from tests.support.settings import make_settings


def test_server_cpu_per_call_pools_repetitions_and_skips_unmeasured_ones():
    reps: list[dict] = [
        {"latencies": [0.01] * 10, "server_cpu_s": 0.2},  # 20 ms a call
        {"latencies": [0.01] * 30, "server_cpu_s": 0.3},  # 10 ms a call
        {"latencies": [0.01] * 5, "server_cpu_s": None},  # no reading: out of both sums
    ]
    found = server_cpu_ms_per_call(reps)
    assert found["server_cpu_ms"] == pytest.approx(500 / 40)
    assert found["rep_server_cpu_ms"] == pytest.approx([20.0, 10.0])
    assert math.isnan(server_cpu_ms_per_call([])["server_cpu_ms"])


def test_run_rows_are_mlflow_shaped_and_valid(tmp_path):
    t = ScaleTarget(Target("sqlite", "tuned", make_settings(tmp_path)), experiment_id="7", artifact_location="/a")
    rows = run_rows(t, 10, 13, 100)
    assert {k: len(v) for k, v in rows.items()} == {
        "runs": 3,
        "params": 9,
        "tags": 9,
        "metrics": 9,
        "latest_metrics": 9,
    }
    for table, values in rows.items():
        assert all(len(row) == len(COLUMNS[table].split(", ")) for row in values), table
    run = rows["runs"][0]
    assert len(run[0]) == 32 and run[1] == "scale-0000010" and run[10] == "active" and run[12] == 7
    assert run[11] == f"/a/{run[0]}/artifacts"
    assert ("mlflow.runName", "scale-0000010", run[0]) in rows["tags"]
    assert len({r[0] for r in rows["runs"]}) == 3  # one id each


def test_scale_spec_refuses_unknown_keys_and_unsorted_counts():
    base = {
        "run_counts": [10, 100],
        "search_calls": 1,
        "get_run_calls": 1,
        "ui_loads": 0,
        "history_points": 0,
        "history_calls": 0,
        "traces": 0,
        "spans_per_trace": 0,
        "artifact_mib": 0,
        "load_batch": 10,
        "raw": {},
    }
    assert ScaleSpec.from_preset("s", {"kind": "scale", **base}).run_counts == [10, 100]
    with pytest.raises(UserError, match="unknown key"):
        ScaleSpec.from_preset("s", {**base, "runs": 3})
    with pytest.raises(UserError, match="ascending"):
        ScaleSpec.from_preset("s", {**base, "run_counts": [100, 10]})


def _figure(setup, figure, scale, **values):
    base = {"backend": "postgres", "setup": setup, "figure": figure, "scale": scale, "p50_ms": math.nan}
    base.update({"rate": math.nan, "limit_p50_ms": math.nan, "limit_rate": math.nan, "limit_what": ""})
    return {**base, **values}


def _doc():
    figures = [
        _figure("tuned", "search_runs", "10,000 runs", p50_ms=20.0, limit_p50_ms=5.0, server_cpu_ms=9.0),
        _figure("stock", "search_runs", "10,000 runs", p50_ms=30.0, server_cpu_ms=20.0),
        _figure("tuned", "search_runs", "100,000 runs", p50_ms=40.0, limit_p50_ms=30.0, server_cpu_ms=9.0),
        _figure("stock", "search_runs", "100,000 runs", p50_ms=100.0, server_cpu_ms=20.0),
        _figure(
            "tuned",
            "1,024 MiB artifact upload",
            "proxied",
            rate=300.0,
            unit="MB/s",
            limit_rate=500.0,
            idle_rss=800 * 2**20,
            peak_rss=900 * 2**20,
        ),  # fmt: skip
        _figure("stock", "1,024 MiB artifact upload", "proxied", rate=150.0, unit="MB/s", idle_rss=1, peak_rss=1),
    ]
    env = {"mlflow": "3.17.2", "kernel": "6.18", "cpu_model": "AMD EPYC", "cpu_count": 2, "postgres": "15"}
    doc = {"meta": {"backends": ["postgres"], "preset": "scale", "duration_s": 1.0, "started_at": "2026-12-04T00:00:00"},
           "figures": figures, "loads": [], "levers": [], "raw": [], "artifact_limit": [], "environment": env}  # fmt: skip
    doc["targets"] = scale_targets(doc)
    return doc


def test_scale_targets_take_the_largest_store_and_the_upload():
    targets = {t["target"]: t for t in _doc()["targets"]}
    search = targets["search_runs p50 at 100,000 runs, tuned/stock"]
    assert search["value"] == pytest.approx(0.4) and search["met"]
    assert search["where"] == "the same SQL takes 75% of tuned's p50"  # what bounds it
    upload = targets["artifact upload rate / loopback copy rate (tuned)"]
    assert upload["value"] == pytest.approx(0.6) and upload["met"]
    rss = targets["server peak RSS during the upload / idle RSS (tuned)"]
    assert rss["value"] == pytest.approx(900 / 800) and rss["met"]


def test_scale_tables_put_tuned_beside_stock_and_the_limit():
    rows = {(r[1], r[2]): r for r in scale_report.figure_rows(_doc())}
    assert rows[("search_runs", "100,000 runs")][3:8] == ["40.0 ms p50", "100.0", "2.50x", "30.0", "75%"]
    assert rows[("1,024 MiB artifact upload", "proxied")][3:8] == ["300.0 MB/s", "150.0", "2.00x", "500.0", "60%"]
    text = scale_report.terminal_report(_doc())
    assert "srv CPU ms tuned" in text and "MET" in text
