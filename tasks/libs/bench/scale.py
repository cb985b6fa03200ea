"""`inv bench --preset scale`: what calls cost as the store grows, tuned vs stock, each beside its limit.

Per backend, a tuned and a stock server (as in the quick bench: own state dirs, free ports, own
stores on one throwaway PostgreSQL) are filled and measured in the same order:

  runs      run_counts runs (params, tags, metrics) bulk-loaded straight into the store the
            server uses, in MLflow's own schema: PostgreSQL through COPY, SQLite through one
            executemany per table and batch (the load rate is reported); then ANALYZE, as
            autovacuum would. At each count: search_runs with a filter and an order_by,
            get_run, and the web UI's experiment page in headless Chromium until the newest
            run shows. Limit: the same query run as SQL straight on the store.
  history   a metric of history_points points (bulk-loaded) read by get_metric_history.
            Limit: its rows selected as SQL.
  traces    spans/s through MLflow's SDK and through OTLP/HTTP `POST /v1/traces`
            (tasks.libs.bench.traces, a child process). Limit: the raw batched insert rate of
            rows into the same store (bench.raw).
  artifact  an artifact_mib file uploaded and downloaded through the proxied server (MB/s),
            with the server group's idle and peak RSS. Limit: the same bytes PUT and GOT over
            loopback HTTP by a plain Python server writing the same disk (scale_artifacts.loopback_copy).

Every call-type figure also has the server's CPU ms per call (its process group's CPU time
over the calls / calls). Levers (PostgreSQL indexes named mlflow_ops_*) are measured old vs
new on the tuned store in the same run, and dropped again: adopting one is a separate change.

This module starts the servers, runs the phases in that order and stops everything; the parts live
beside it: scale_spec (the preset, the servers measured, the targets), scale_seed (the bulk loads),
scale_calls (timed calls and their SQL limits), scale_phases (runs, history, traces),
scale_artifacts (the artifact phase and its loopback limit), scale_report (the outputs).
"""

from __future__ import annotations

import math
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.libs.bench import scale_artifacts, scale_phases
from tasks.libs.bench.runner import (
    SETUPS,
    Target,
    bench_settings,
    describe_environment,
    describe_setup,
    fresh_store,
    raw_insert_rates,
    stderr_progress,
)
from tasks.libs.bench.scale_spec import ScaleSpec, ScaleTarget, scale_targets
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.venvs import pip_freeze
from tasks.libs.postgres.providers import provider_for
from tasks.libs.server.command import ensure_stock_venv
from tasks.libs.server.control import start_server, stop_server


def run_scale(
    per_backend: dict[str, Settings], *, spec: ScaleSpec, progress: Callable[[str], None] | None = None
) -> dict:
    """The whole scale comparison; the results document (see bench.scale_report)."""
    progress = progress or stderr_progress()
    base = next(iter(per_backend.values()))
    stock_python = ensure_stock_venv(base, say=progress)
    root = Path(tempfile.mkdtemp(prefix="mlflow-ops-scale-", dir="/tmp"))
    root.chmod(0o755)
    began, started_at = time.monotonic(), datetime.now(timezone.utc)
    password = secrets.token_urlsafe(18)

    def say(message: str) -> None:
        progress(f"{message}  ({time.monotonic() - began:.0f} s)" if message else "")

    pg_settings = (
        bench_settings(per_backend["postgres"], root / "postgres", password, database="postgres")
        if "postgres" in per_backend
        else None
    )
    pg_port = pg_settings.postgres.port if pg_settings else None
    targets = [
        ScaleTarget(
            Target(
                b,
                s,
                bench_settings(
                    per_backend[b], root / f"{b}-{s}", password, database=f"mlflow_scale_{s}", pg_port=pg_port
                ),
            )
        )
        for b in per_backend
        for s in SETUPS
    ]
    db = provider_for(pg_settings) if pg_settings else None
    doc: dict[str, Any] = {"loads": [], "figures": [], "levers": [], "raw": [], "artifact_limit": []}
    blob = root / "blob.bin"
    try:
        if db:
            say("starting PostgreSQL")
            db.start()
        for t in targets:
            fresh_store(t.target)
        say(f"starting {len(targets)} servers")
        for t in targets:
            try:
                start_server(t.settings, stock=t.target.stock)
            except UserError as exc:
                raise UserError(f"{t.target.name}: {exc}") from None
        for t in targets:
            _prepare(t)
        for backend in per_backend:
            pair = [t for t in targets if t.target.backend == backend]
            scale_phases.runs(pair, spec, doc, say)
            scale_phases.history(pair, spec, doc, say)
            scale_phases.traces(pair, spec, doc, say)
            doc["raw"] += [
                dict(backend=backend, store=t.target.setup, **row)
                for t in pair
                for row in raw_insert_rates(t.target, spec.workload_view())
            ]
        if spec.artifact_mib:
            say(f"writing a {spec.artifact_mib} MiB file")
            scale_artifacts.write_blob(blob, spec.artifact_mib)
            doc["artifact_limit"] = [scale_artifacts.loopback_copy(blob, root / "loopback")]
            for backend in per_backend:
                scale_artifacts.artifacts([t for t in targets if t.target.backend == backend], blob, doc, say)
        env = describe_environment([t.target for t in targets], pg_settings)
        doc["packages"] = {"tuned": pip_freeze(sys.executable), "stock": pip_freeze(stock_python)}
        doc["setups"] = [describe_setup(t.target) for t in targets]
    finally:
        say("stopping servers")
        for t in targets:
            stop_server(t.settings)
        if db:
            db.stop()
        shutil.rmtree(root, ignore_errors=True)
        progress("")
    doc["meta"] = {
        "preset": spec.name,
        "kind": "scale",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - began, 1),
        "backends": list(per_backend),
        "spec": spec.__dict__,
    }
    doc["environment"] = env
    _raw_limits(doc)
    doc["targets"] = scale_targets(doc)
    return doc


def _raw_limits(doc: dict) -> None:
    """Writes without a query of their own (spans, the bulk loads) stand beside the raw batched
    insert rate of rows into the same store: the floor under any write."""
    batched = {(r["backend"], r["store"]): r["rows_per_s"] for r in doc["raw"] if r["mode"] != "1 row/commit"}
    for f in doc["figures"]:
        if f["figure"].startswith("trace ingestion"):
            f["limit_rate"] = batched.get((f["backend"], f["setup"]), math.nan)
            f["limit_what"] = "raw batched insert rate of rows into the same store (rows/s)"
    for load in doc["loads"]:
        load["raw_rows_per_s"] = batched.get((load["backend"], load["setup"]), math.nan)


def _prepare(t: ScaleTarget) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(t.url)
    t.experiment_id = client.create_experiment(f"mlflow-ops-scale-{uuid.uuid4().hex[:8]}")
    t.artifact_location = client.get_experiment(t.experiment_id).artifact_location
    t.history_run = client.create_run(t.experiment_id, run_name="history").info.run_id
