"""A tiny bench end to end on both backends: real servers (tuned and stock), real PostgreSQL."""

import csv
import json
import math
import shutil

import pytest

from tasks.libs.bench import report as bench_report
from tasks.libs.bench.runner import run_bench
from tasks.libs.bench.workload import OPS, load_spec
from tests.support.settings import STOCK_VENVS, make_settings


def tiny_spec():
    spec = load_spec("quick")
    ops = {op: 1 for op in OPS}
    ops["log_metric"] = 4
    return spec.scaled(
        name="tiny",
        ops=ops,
        concurrent_ops=None,
        clients=[1, 8],
        repetitions=2,
        seed_runs=5,
        warmup_clients=2,
        startup_repetitions=1,
        warmup={op: 1 for op in OPS},
        raw={"single_rows": 50, "batch_rows": 100, "batches": 3, "max_seconds": 1},
    )


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    messages: list[str] = []
    # only read for their settings: the bench runs in state dirs of its own under /tmp
    state = tmp_path_factory.mktemp("settings")
    per_backend = {
        b: make_settings(state, backend=b, **{"lifecycle.venvs_dir": STOCK_VENVS}) for b in ("sqlite", "postgres")
    }
    doc = run_bench(per_backend, spec=tiny_spec(), progress=messages.append)
    out = bench_report.write_outputs(doc, tmp_path_factory.mktemp("results"))
    yield doc, out, messages
    shutil.rmtree(out, ignore_errors=True)


def test_every_output_file_is_written(bench):
    doc, out, messages = bench
    for name in bench_report.FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["preset"] == "tiny" and len(saved["cells"]) == len(doc["cells"])
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(doc["cells"])
    md = (out / "report.md").read_text()
    for heading in ("## Environment", "## Set-ups", "## Targets", "## Timings", "## MLflow vs raw", "## Packages"):
        assert heading in md
    assert any("rep 2/2" in m for m in messages)


def test_every_cell_has_sane_numbers(bench):
    doc, _, _ = bench
    cells = {(c["backend"], c["setup"], c["clients"], c["op"]): c for c in doc["cells"]}
    expected = {(b, s, c, op) for b in ("sqlite", "postgres") for s in ("tuned", "stock") for c in (1, 8) for op in OPS}
    assert set(cells) == expected
    for key, cell in cells.items():
        assert cell["errors"] == 0, (key, doc["error_examples"])
        assert cell["n"] >= 2, key  # 2 repetitions (x clients)
        assert 0 < cell["p50_ms"] <= cell["p95_ms"] <= cell["p99_ms"] <= cell["max_ms"] < 120_000, key
        assert cell["throughput"] > 0, key
        # the server's group CPU over the phase / calls, read in clock ticks of 10 ms: a phase of
        # two cheap calls may cost less than one tick, but no set-up serves all its calls for nothing
        assert 0 <= cell["server_cpu_ms"] < 60_000, key
    for backend, setup in {(b, s) for b, s, _, _ in cells}:
        assert sum(c["server_cpu_ms"] for k, c in cells.items() if k[:2] == (backend, setup)) > 0, (backend, setup)
    assert cells[("sqlite", "tuned", 8, "log_metric")]["n"] == 2 * 8 * 4


def test_ratios_targets_raw_and_environment(bench):
    doc, out, _ = bench
    assert len(doc["targets"]) == 8
    measured = [t for t in doc["targets"] if t["measure"] != "every_cell"]  # 2 repetitions: no worst cell
    assert all(t["value"] > 0 and not math.isnan(t["value"]) for t in measured)
    footprint = {(f["backend"], f["setup"]): f for f in doc["footprint"]}
    assert set(footprint) == {(b, s) for b in ("sqlite", "postgres") for s in ("tuned", "stock")}
    for key, f in footprint.items():
        assert len(f["ready_s"]) == 1 and 0.5 < f["ready_median_s"] < 300, key
        assert 50 * 2**20 < f["idle_pss_median"] <= f["idle_rss_median"] <= f["peak_rss"] * 1.2, key
    kinds = {r["comparison"] for r in doc["ratios"]}
    assert kinds == {"tuned vs stock", "postgres vs sqlite"}
    assert all(len(r["p50_paired"]) == 2 for r in doc["ratios"])
    assert {(r["backend"], r["store"]) for r in doc["raw"]} == {
        (b, s) for b in ("sqlite", "postgres") for s in ("tuned", "stock")
    }
    assert all(r["rows_per_s"] > 0 and r["rows"] > 0 for r in doc["raw"])
    assert all(r["mlflow_over_raw"] > 0 for r in doc["mlflow_vs_raw"])
    env = doc["environment"]
    assert env["sqlite_journal_mode_tuned"] == "wal" and env["sqlite_journal_mode_stock"] != "wal"
    assert env["postgres"][0].isdigit() and env["mlflow"] and env["cpu_count"] >= 1
    assert env["kernel"] and env["cpu_model"]
    stock = next(s for s in doc["setups"] if s["setup"] == "stock" and s["backend"] == "postgres")
    assert stock["command"].startswith("<venvs>/stock-mlflow-") and "***" in stock["store"]
    assert stock["command"].split(" ", 1)[1].startswith("server --host 127.0.0.1 --port ")
    assert "--workers" not in stock["command"] and not stock["env"]  # every MLflow default
    tuned = next(s for s in doc["setups"] if s["setup"] == "tuned" and s["backend"] == "postgres")
    assert tuned["env"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"  # jobs on for both set-ups
    packages = {k: {line.split("==")[0].lower() for line in v} for k, v in doc["packages"].items()}
    assert {"mlflow", "psycopg2-binary", "huey"} <= packages["stock"] and "httptools" not in packages["stock"]
    assert {"mlflow", "httptools", "uvloop"} <= packages["tuned"]
    rows = bench_report.compare(bench_report.load_results(out), bench_report.load_results(out))
    assert rows and all(r[6] in ("1.00", "-") for r in rows)
    assert "stock/tuned p50" in bench_report.terminal_report(doc)
    assert "srv CPU ms/call" in bench_report.terminal_report(doc)
