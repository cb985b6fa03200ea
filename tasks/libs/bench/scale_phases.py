"""The scale bench's phases on a tuned/stock pair: runs (search_runs, get_run, the web UI, the
index levers) at each store size, a long metric history, trace ingestion. Each appends its figures
to the results document."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tasks.libs.bench.runner import server_pgid
from tasks.libs.bench.scale_calls import (
    figure,
    get_run_call,
    history_call,
    raw_get_run,
    raw_history,
    raw_search,
    search_call,
    timed_calls,
)
from tasks.libs.bench.scale_seed import analyze, bulk_insert, load_runs, store_engine
from tasks.libs.bench.scale_spec import ScaleSpec, ScaleTarget
from tasks.libs.bench.stats import ratio
from tasks.libs.bench.workload import group_cpu_seconds
from tasks.libs.checks.ui import Page, open_and_find
from tasks.libs.core.settings import Settings

CHROMIUM = "/usr/bin/chromium"
UI_TIMEOUT_S = 180  # the runs page of a 10^5-run experiment on a busy machine
# PostgreSQL indexes for the queries search_runs sends (a filter on a metric and a param, an
# order by a metric): candidates, measured old vs new on the tuned store in the same run.
LEVER_INDEXES = {
    "mlflow_ops_latest_metrics_key_value": "CREATE INDEX mlflow_ops_latest_metrics_key_value "
    "ON latest_metrics (key, value, run_uuid)",
    "mlflow_ops_params_key_value": "CREATE INDEX mlflow_ops_params_key_value ON params (key, value, run_uuid)",
}


def runs(pair: list[ScaleTarget], spec: ScaleSpec, doc: dict, say) -> None:
    from mlflow import MlflowClient

    loaded = 0
    total = spec.run_counts[-1]
    for n in spec.run_counts:
        scale = f"{n:,} runs"
        for t in pair:
            say(f"{t.target.name}: loading runs {loaded:,}..{n:,}")
            found = load_runs(t, loaded, n, total, spec.load_batch)
            method = (
                "COPY, one transaction per batch"
                if t.target.backend == "postgres"
                else "executemany, one transaction per batch"
            )
            doc["loads"].append(
                {"backend": t.target.backend, "setup": t.target.setup, "scale": scale, "method": method, **found}
            )
        loaded = n
        ids = [f"{pair[0].run_prefix}{i:024x}" for i in range(0, n, max(1, n // 50))]
        for t in pair if (n // 7) % 2 == 0 else pair[::-1]:
            client = MlflowClient(t.url)
            pgid = server_pgid(t.settings)
            run_ids = [f"{t.run_prefix}{x[8:]}" for x in ids]
            say(f"{t.target.name}: search_runs, get_run at {scale}")
            limit_search = timed_calls(raw_search(t.settings, t.experiment_id), spec.search_calls)
            doc["figures"].append(
                figure(
                    t,
                    "search_runs",
                    scale,
                    timed_calls(search_call(client, t.experiment_id), spec.search_calls, pgid=pgid),
                    limit={"p50_ms": limit_search["p50_ms"], "what": "the same query and the 100 runs' details as SQL"},
                )
            )
            limit_get = timed_calls(raw_get_run(t.settings, run_ids), spec.get_run_calls)
            doc["figures"].append(
                figure(
                    t,
                    "get_run",
                    scale,
                    timed_calls(get_run_call(client, run_ids), spec.get_run_calls, pgid=pgid),
                    limit={
                        "p50_ms": limit_get["p50_ms"],
                        "what": "the run, its params, tags and latest metrics as SQL",
                    },
                )
            )
            if spec.ui_loads:
                doc["figures"].append(figure(t, "web UI runs page", scale, _ui(t, n, spec.ui_loads, say)))
        if spec.levers and n == total:
            doc["levers"] += _levers([t for t in pair if t.target.setup == "tuned"], spec, scale, say)


def _ui(t: ScaleTarget, n: int, loads: int, say) -> dict[str, Any]:
    """Seconds until the newest run shows on the experiment's runs page, per load (a new browser each)."""
    if not os.access(CHROMIUM, os.X_OK):
        return {"n": 0, "errors": 0, "error_examples": [f"no browser at {CHROMIUM} (inv deps)"], "p50_ms": math.nan}
    newest = f"scale-{n - 1:07d}"
    page = Page(f"/experiments/{t.experiment_id}/runs", newest, f"run {newest}", t.settings.state_path / "ui.png")
    say(f"{t.target.name}: web UI at {n:,} runs")
    pgid = server_pgid(t.settings)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return {
            "n": 0,
            "errors": 0,
            "error_examples": ["playwright is missing: pip install -e '.[test]'"],
            "p50_ms": math.nan,
        }
    timeout_ms = int(UI_TIMEOUT_S * 1000)
    return timed_calls(
        lambda i: open_and_find(t.url, [page], CHROMIUM, timeout_ms=timeout_ms), loads, pgid=pgid, warmup=1
    )


def _levers(tuned: list[ScaleTarget], spec: ScaleSpec, scale: str, say) -> list[dict]:
    """Each candidate index on the tuned PostgreSQL store: search_runs before, with it, the ratio; then dropped."""
    from mlflow import MlflowClient

    out: list[dict] = []
    for t in tuned:
        if t.target.backend != "postgres":
            continue
        search = search_call(MlflowClient(t.url), t.experiment_id)
        say(f"{t.target.name}: levers (indexes) at {scale}")
        before = timed_calls(search, spec.search_calls, pgid=server_pgid(t.settings))
        with store_engine(t.settings) as engine:
            with engine.begin() as conn:
                for ddl in LEVER_INDEXES.values():
                    conn.exec_driver_sql(ddl)
                conn.exec_driver_sql("ANALYZE latest_metrics")
                conn.exec_driver_sql("ANALYZE params")
            after = timed_calls(search, spec.search_calls, pgid=server_pgid(t.settings))
            with engine.begin() as conn:
                for name in LEVER_INDEXES:
                    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
        out.append(
            {
                "backend": "postgres",
                "lever": "indexes " + ", ".join(LEVER_INDEXES),
                "figure": "search_runs",
                "scale": scale,
                "before_p50_ms": before["p50_ms"],
                "after_p50_ms": after["p50_ms"],
                "before_cpu_ms": before["server_cpu_ms"],
                "after_cpu_ms": after["server_cpu_ms"],
                "speedup": ratio(before["p50_ms"], after["p50_ms"]),
                "adopted": False,
            }
        )
    return out


def history(pair: list[ScaleTarget], spec: ScaleSpec, doc: dict, say) -> None:
    from mlflow import MlflowClient

    if not spec.history_points:
        return
    scale = f"{spec.history_points:,} points"
    for t in pair:
        say(f"{t.target.name}: loading a {scale} metric")
        now = int(time.time() * 1000)
        began, rows = time.perf_counter(), 0
        for first in range(0, spec.history_points, 100_000):
            steps = range(first, min(first + 100_000, spec.history_points))
            rows += bulk_insert(
                t.settings, {"metrics": [("hist", s / 1000, now + s, t.history_run, s, False) for s in steps]}
            )
        last = spec.history_points - 1
        bulk_insert(t.settings, {"latest_metrics": [("hist", last / 1000, now + last, last, False, t.history_run)]})
        seconds = time.perf_counter() - began
        analyze(t.settings)
        method = "COPY" if t.target.backend == "postgres" else "executemany"
        doc["loads"].append(
            {"backend": t.target.backend, "setup": t.target.setup, "scale": scale, "method": method, "rows": rows,
             "runs": 1, "seconds": seconds, "rows_per_s": rows / seconds if seconds else 0.0}
        )  # fmt: skip
    for t in pair:
        say(f"{t.target.name}: get_metric_history of {scale}")
        client = MlflowClient(t.url)
        limit = timed_calls(raw_history(t.settings, t.history_run), spec.history_calls, warmup=1)
        measured = timed_calls(
            history_call(client, t.history_run, spec.history_points),
            spec.history_calls,
            warmup=1,
            pgid=server_pgid(t.settings),
        )
        doc["figures"].append(
            figure(
                t, "get_metric_history", scale, measured, limit={"p50_ms": limit["p50_ms"], "what": "its rows as SQL"}
            )
        )


def traces(pair: list[ScaleTarget], spec: ScaleSpec, doc: dict, say) -> None:
    if not spec.traces:
        return
    for mode in ("sdk", "otlp"):
        for t in pair:
            say(f"{t.target.name}: {spec.traces} traces x {spec.spans_per_trace} spans through {mode}")
            pgid = server_pgid(t.settings)
            cpu_before = group_cpu_seconds(pgid) if pgid else 0.0
            result = trace_ingest(
                mode, t.url, t.experiment_id, spec.traces, spec.spans_per_trace, spec.request_timeout_s
            )
            cpu = group_cpu_seconds(pgid) - cpu_before if pgid else math.nan
            stored = _stored_spans(t.settings, t.experiment_id)
            measured = {
                "n": result.get("spans", 0),
                "errors": 0 if "error" not in result else 1,
                "error_examples": [result["error"]] if "error" in result else [],
                "p50_ms": math.nan,
                "rate": result.get("spans_per_s", math.nan),
                "unit": "spans/s",
                "stored_spans_total": stored,
                "server_cpu_ms": cpu * 1000 / result["spans"] if result.get("spans") else math.nan,
            }
            doc["figures"].append(
                figure(t, f"trace ingestion ({mode})", f"{spec.traces} x {spec.spans_per_trace} spans", measured)
            )


def trace_ingest(mode: str, url: str, experiment_id: str, traces: int, spans: int, timeout: float) -> dict[str, Any]:
    """Run tasks.libs.bench.traces in a child process; its JSON result or {"error": ...}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tasks.libs.bench.traces", mode, url, experiment_id, str(traces), str(spans)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(Path(__file__).resolve().parents[3]),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{mode}: no result within {timeout:.0f} s"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("MLFLOW-OPS-TRACES ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{mode}: exit {proc.returncode}: {tail[:300]}"}
    return json.loads(line.partition(" ")[2])


def _stored_spans(settings: Settings, experiment_id: str) -> int:
    import sqlalchemy as sa

    with store_engine(settings) as engine, engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM spans WHERE experiment_id = :e"), {"e": int(experiment_id)}
            ).scalar()
            or 0
        )
