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
            loopback HTTP by a plain Python server writing the same disk (loopback_copy).

Every call-type figure also has the server's CPU ms per call (its process group's CPU time
over the calls / calls). Levers (PostgreSQL indexes named mlflow_ops_*) are measured old vs
new on the tuned store in the same run, and dropped again: adopting one is a separate change.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tasks.libs.bench.footprint import tree_memory
from tasks.libs.bench.runner import (
    SETUPS,
    Target,
    _describe_setup,
    _environment,
    _fresh_store,
    _isolate,
    _raw,
    server_pgid,
    stderr_progress,
)
from tasks.libs.bench.stats import percentile, ratio
from tasks.libs.bench.workload import WorkloadSpec, group_cpu_seconds
from tasks.libs.checks.ui import Page, open_and_find
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.databases import engine_for, sqlite_connection
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import Settings
from tasks.libs.core.venvs import pip_freeze
from tasks.libs.postgres.providers import provider_for
from tasks.libs.server.command import ensure_stock_venv
from tasks.libs.server.control import start_server, stop_server

CHROMIUM = "/usr/bin/chromium"
UI_TIMEOUT_S = 180  # the runs page of a 10^5-run experiment on a busy machine
SEARCH_FILTER = "metrics.m0 > 0.5 and params.p0 = 'v3'"
SEARCH_ORDER = "metrics.m1 DESC"
# PostgreSQL indexes for the queries search_runs sends (a filter on a metric and a param, an
# order by a metric): candidates, measured old vs new on the tuned store in the same run.
LEVER_INDEXES = {
    "mlflow_ops_latest_metrics_key_value": "CREATE INDEX mlflow_ops_latest_metrics_key_value "
    "ON latest_metrics (key, value, run_uuid)",
    "mlflow_ops_params_key_value": "CREATE INDEX mlflow_ops_params_key_value ON params (key, value, run_uuid)",
}
# The client's multipart settings for the 1 GiB artifact (MLflow reads them at call time).
# Through the proxy, multipart needs a cloud store behind the server (S3, GCS, Azure): with a
# local artifact root the client sends one streaming PUT and reads one streaming GET whatever
# these say; they are set so that a bucket behind the server would use them.
ARTIFACT_CLIENT_ENV = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
    "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(100 * 2**20),
    "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(64 * 2**20),
    # a local root answers the presigned-download request with 501 and the client falls back:
    # off, to save that request (MLflow's own warning says so)
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "1200",
}


@dataclass
class ScaleSpec:
    name: str
    run_counts: list[int]
    search_calls: int
    get_run_calls: int
    ui_loads: int
    history_points: int
    history_calls: int
    traces: int
    spans_per_trace: int
    artifact_mib: int
    load_batch: int
    raw: dict[str, float]
    request_timeout_s: float = 600
    levers: bool = True

    @classmethod
    def from_preset(cls, name: str, data: dict) -> ScaleSpec:
        known = set(cls.__dataclass_fields__) - {"name"}
        unknown = set(data) - known - {"kind"}
        if unknown:
            raise UserError(
                f"preset {name!r}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        try:
            spec = cls(name=name, **{k: v for k, v in data.items() if k != "kind"})
        except TypeError as exc:
            raise UserError(f"preset {name!r} is incomplete ({exc})") from None
        if not spec.run_counts or min(spec.run_counts) < 1 or spec.run_counts != sorted(spec.run_counts):
            raise UserError(f"preset {name!r}: run_counts must be ascending counts >= 1")
        return spec

    def workload_view(self) -> WorkloadSpec:
        """What the shared helpers (raw inserts) read from a spec."""
        return WorkloadSpec(
            name=self.name,
            ops={},
            clients=[1],
            repetitions=1,
            seed_runs=0,
            warmup={},
            warmup_clients=1,
            phase_timeout_s=self.request_timeout_s,
            request_timeout_s=self.request_timeout_s,
            raw=self.raw,
        )


@dataclass
class ScaleTarget:
    target: Target
    experiment_id: str = ""
    artifact_location: str = ""
    history_run: str = ""
    run_prefix: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def settings(self) -> Settings:
        return self.target.settings

    @property
    def url(self) -> str:
        return self.target.url


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
        _isolate(per_backend["postgres"], root / "postgres", password, database="postgres")
        if "postgres" in per_backend
        else None
    )
    pg_port = pg_settings.postgres.port if pg_settings else None
    targets = [
        ScaleTarget(
            Target(
                b,
                s,
                _isolate(per_backend[b], root / f"{b}-{s}", password, database=f"mlflow_scale_{s}", pg_port=pg_port),
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
            _fresh_store(t.target)
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
            _runs(pair, spec, doc, say)
            _history(pair, spec, doc, say)
            _traces(pair, spec, doc, say)
            doc["raw"] += [
                dict(backend=backend, store=t.target.setup, **row)
                for t in pair
                for row in _raw(t.target, spec.workload_view())
            ]
        if spec.artifact_mib:
            say(f"writing a {spec.artifact_mib} MiB file")
            _write_blob(blob, spec.artifact_mib)
            doc["artifact_limit"] = [loopback_copy(blob, root / "loopback")]
            for backend in per_backend:
                _artifacts([t for t in targets if t.target.backend == backend], blob, doc, say)
        env = _environment([t.target for t in targets], pg_settings)
        doc["packages"] = {"tuned": pip_freeze(sys.executable), "stock": pip_freeze(stock_python)}
        doc["setups"] = [_describe_setup(t.target) for t in targets]
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


# --- the store: a scale experiment, bulk loads, raw queries ------------------------------------


def _prepare(t: ScaleTarget) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(t.url)
    t.experiment_id = client.create_experiment(f"mlflow-ops-scale-{uuid.uuid4().hex[:8]}")
    t.artifact_location = client.get_experiment(t.experiment_id).artifact_location
    t.history_run = client.create_run(t.experiment_id, run_name="history").info.run_id


@contextmanager
def _engine(settings: Settings) -> Iterator[Any]:
    """The store's engine (core.databases.engine_for: no pool, disposed at the end)."""
    with engine_for(backend_store_uri(settings, reveal=True)) as engine:
        yield engine


def run_rows(t: ScaleTarget, start: int, stop: int, total: int) -> dict[str, list[tuple]]:
    """MLflow's rows for runs start..stop-1 of the scale experiment: the run, 3 params, 3 tags
    (its name, user and one of ours), 3 metrics with their latest values."""
    now = int(time.time() * 1000)
    rows: dict[str, list[tuple]] = {k: [] for k in ("runs", "params", "tags", "metrics", "latest_metrics")}
    for i in range(start, stop):
        run = f"{t.run_prefix}{i:024x}"
        name = f"scale-{i:07d}"
        begun = now - (total - i) * 1000
        rows["runs"].append(
            (run, name, "LOCAL", "", "", "bench", "FINISHED", begun, begun + 500, "", "active",
             f"{t.artifact_location}/{run}/artifacts", int(t.experiment_id))
        )  # fmt: skip
        rows["params"] += [("p0", f"v{i % 10}", run), ("p1", str(i % 100), run), ("p2", "adam", run)]
        rows["tags"] += [("mlflow.runName", name, run), ("mlflow.user", "bench", run), ("team", f"t{i % 5}", run)]
        values = ((i * 7919) % 1000 / 1000, (i * 104729) % 1000 / 1000, i / max(total, 1))
        for key, value in zip(("m0", "m1", "m2"), values):
            rows["metrics"].append((key, value, begun, run, 0, False))
            rows["latest_metrics"].append((key, value, begun, 0, False, run))
    return rows


COLUMNS = {
    "runs": "run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, end_time, "
    "source_version, lifecycle_stage, artifact_uri, experiment_id",
    "params": "key, value, run_uuid",
    "tags": "key, value, run_uuid",
    "metrics": "key, value, timestamp, run_uuid, step, is_nan",
    "latest_metrics": "key, value, timestamp, step, is_nan, run_uuid",
}


def bulk_insert(settings: Settings, rows: dict[str, list[tuple]]) -> int:
    """rows (table -> tuples in COLUMNS order) into the store, parents first, in one transaction."""
    count = 0
    if settings.backend == "postgres":
        import csv
        import io

        with _engine(settings) as engine:
            conn = engine.raw_connection()
            try:
                cur = conn.cursor()
                for table in COLUMNS:
                    if not rows.get(table):
                        continue
                    buf = io.StringIO()
                    writer = csv.writer(buf)
                    for row in rows[table]:
                        writer.writerow(["t" if v is True else "f" if v is False else v for v in row])
                    buf.seek(0)
                    cur.copy_expert(f"COPY {table} ({COLUMNS[table]}) FROM STDIN WITH (FORMAT csv)", buf)
                    count += len(rows[table])
                conn.commit()
            finally:
                conn.close()
        return count
    with sqlite_connection(settings.sqlite_file, timeout=60) as conn:
        for table in COLUMNS:
            if not rows.get(table):
                continue
            marks = ", ".join("?" * len(rows[table][0]))
            conn.executemany(f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})", rows[table])
            count += len(rows[table])
    return count


def analyze(settings: Settings) -> None:
    """Fresh planner statistics after a bulk load, as autovacuum (PostgreSQL) would make them."""
    with _engine(settings) as engine, engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def load_runs(t: ScaleTarget, start: int, stop: int, total: int, batch: int) -> dict[str, Any]:
    began, rows = time.perf_counter(), 0
    for first in range(start, stop, batch):
        rows += bulk_insert(t.settings, run_rows(t, first, min(first + batch, stop), total))
    seconds = time.perf_counter() - began
    analyze(t.settings)
    return {"rows": rows, "runs": stop - start, "seconds": seconds, "rows_per_s": rows / seconds if seconds else 0.0}


def raw_search(settings: Settings, experiment_id: str) -> Callable[[int], Any]:
    """search_runs' query as SQL: the filter on m0 and p0, the order by m1, the first 100 runs,
    then their params, tags and latest metrics (what MLflow returns with each run)."""
    import sqlalchemy as sa

    query = sa.text(
        "SELECT r.run_uuid FROM runs r "
        "JOIN latest_metrics m0 ON m0.run_uuid = r.run_uuid AND m0.key = 'm0' "
        "JOIN params p ON p.run_uuid = r.run_uuid AND p.key = 'p0' "
        "LEFT JOIN latest_metrics m1 ON m1.run_uuid = r.run_uuid AND m1.key = 'm1' "
        "WHERE r.experiment_id = :e AND r.lifecycle_stage = 'active' AND m0.value > 0.5 AND p.value = 'v3' "
        "ORDER BY m1.value DESC LIMIT 100"
    )
    details = [
        sa.text(f"SELECT * FROM {table} WHERE run_uuid IN :ids").bindparams(sa.bindparam("ids", expanding=True))
        for table in ("runs", "params", "tags", "latest_metrics")
    ]
    return _raw_caller(settings, lambda conn: _search_once(conn, query, details, int(experiment_id)))


def _search_once(conn, query, details, experiment_id: int) -> None:
    ids = [r[0] for r in conn.execute(query, {"e": experiment_id})]
    for detail in details:
        conn.execute(detail, {"ids": ids}).fetchall()


def raw_get_run(settings: Settings, run_ids: list[str]) -> Callable[[int], Any]:
    import sqlalchemy as sa

    queries = [
        sa.text(f"SELECT * FROM {table} WHERE run_uuid = :r") for table in ("runs", "params", "tags", "latest_metrics")
    ]
    return _raw_caller(
        settings,
        lambda conn, i: [conn.execute(q, {"r": run_ids[i % len(run_ids)]}).fetchall() for q in queries],
        indexed=True,
    )


def raw_history(settings: Settings, run_id: str) -> Callable[[int], Any]:
    import sqlalchemy as sa

    query = sa.text("SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = :r AND key = 'hist'")
    return _raw_caller(settings, lambda conn: conn.execute(query, {"r": run_id}).fetchall())


def _raw_caller(settings: Settings, fn, *, indexed: bool = False) -> Callable[[int], Any]:
    """A call that runs fn on one connection kept open (as a server's pool keeps one)."""
    holder: dict[str, Any] = {}

    def call(i: int) -> Any:
        if "conn" not in holder:
            holder["cm"] = _engine(settings)
            engine = holder["cm"].__enter__()
            holder["conn"] = engine.connect()
        return fn(holder["conn"], i) if indexed else fn(holder["conn"])

    def close() -> None:
        if "conn" in holder:
            holder["conn"].close()
            holder["cm"].__exit__(None, None, None)

    call.close = close  # type: ignore[attr-defined]
    return call


# --- measuring ---------------------------------------------------------------------------------


def timed_calls(
    fn: Callable[[int], Any], calls: int, *, pgid: int | None = None, timeout_s: float = 600, warmup: int = 4
) -> dict[str, Any]:
    """calls sequential calls of fn(i): latency percentiles, calls/s and the server's CPU per call.

    warmup untimed calls first (at most calls): stock's four workers each pay a first call.
    """
    for i in range(min(warmup, calls)):
        with contextlib.suppress(Exception):  # counted when the timed calls fail the same way
            fn(i)
    latencies: list[float] = []
    examples: list[str] = []
    errors = 0
    cpu_before = group_cpu_seconds(pgid) if pgid else None
    began = time.perf_counter()
    for i in range(calls):
        if time.perf_counter() - began > timeout_s:
            break
        t0 = time.perf_counter()
        try:
            fn(i)
        except Exception as exc:
            errors += 1
            if len(examples) < 3:
                examples.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - began
    cpu = (group_cpu_seconds(pgid) - cpu_before) if pgid and cpu_before is not None else None
    close = getattr(fn, "close", None)
    if close:
        close()
    ms = [x * 1000 for x in latencies]
    return {
        "n": len(ms),
        "errors": errors,
        "error_examples": examples,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "calls_per_s": len(ms) / wall if ms and wall else math.nan,
        "server_cpu_ms": cpu * 1000 / len(ms) if cpu is not None and ms else math.nan,
    }


def _figure(
    t: ScaleTarget, figure: str, scale: str, measured: dict[str, Any], *, limit: dict[str, Any] | None = None
) -> dict:
    return {
        "backend": t.target.backend,
        "setup": t.target.setup,
        "figure": figure,
        "scale": scale,
        **measured,
        "limit_p50_ms": (limit or {}).get("p50_ms", math.nan),
        "limit_rate": (limit or {}).get("rate", math.nan),
        "limit_what": (limit or {}).get("what", ""),
    }


def _runs(pair: list[ScaleTarget], spec: ScaleSpec, doc: dict, say) -> None:
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
                _figure(
                    t,
                    "search_runs",
                    scale,
                    timed_calls(search_call(client, t.experiment_id), spec.search_calls, pgid=pgid),
                    limit={"p50_ms": limit_search["p50_ms"], "what": "the same query and the 100 runs' details as SQL"},
                )
            )
            limit_get = timed_calls(raw_get_run(t.settings, run_ids), spec.get_run_calls)
            doc["figures"].append(
                _figure(
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
                doc["figures"].append(_figure(t, "web UI runs page", scale, _ui(t, n, spec.ui_loads, say)))
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
        with _engine(t.settings) as engine:
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


def _history(pair: list[ScaleTarget], spec: ScaleSpec, doc: dict, say) -> None:
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
            _figure(
                t, "get_metric_history", scale, measured, limit={"p50_ms": limit["p50_ms"], "what": "its rows as SQL"}
            )
        )


def search_call(client, experiment_id: str) -> Callable[[int], Any]:
    def call(i: int) -> Any:
        return client.search_runs(
            [experiment_id], filter_string=SEARCH_FILTER, order_by=[SEARCH_ORDER], max_results=100
        )

    return call


def get_run_call(client, run_ids: list[str]) -> Callable[[int], Any]:
    def call(i: int) -> Any:
        return client.get_run(run_ids[i % len(run_ids)])

    return call


def history_call(client, run_id: str, points: int) -> Callable[[int], Any]:
    def call(i: int) -> None:
        got = client.get_metric_history(run_id, "hist")
        if len(got) != points:
            raise RuntimeError(f"get_metric_history returned {len(got)} of {points} points")

    return call


def _traces(pair: list[ScaleTarget], spec: ScaleSpec, doc: dict, say) -> None:
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
                _figure(t, f"trace ingestion ({mode})", f"{spec.traces} x {spec.spans_per_trace} spans", measured)
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

    with _engine(settings) as engine, engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM spans WHERE experiment_id = :e"), {"e": int(experiment_id)}
            ).scalar()
            or 0
        )


# --- artifacts ---------------------------------------------------------------------------------


def _write_blob(path: Path, mib: int) -> None:
    block = os.urandom(2**20)
    with open(path, "wb") as fh:
        for i in range(mib):
            fh.write(block[i % 251 :] + block[: i % 251])  # no two MiB alike, cheaply


class RssPeak:
    """The peak RSS of a process group while the block runs (sampled every 0.2 s)."""

    def __init__(self, pgid: int | None):
        self.pgid, self.peak, self._stop = pgid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pgid:
                self.peak = max(self.peak, tree_memory(self.pgid, pss=False)[0])
            self._stop.wait(0.2)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _artifacts(pair: list[ScaleTarget], blob: Path, doc: dict, say) -> None:
    from mlflow import MlflowClient

    size_mb = blob.stat().st_size / 1e6
    saved = {k: os.environ.get(k) for k in ARTIFACT_CLIENT_ENV}
    os.environ.update(ARTIFACT_CLIENT_ENV)
    try:
        for t in pair:
            client = MlflowClient(t.url)
            run = client.create_run(t.experiment_id, run_name="artifact").info.run_id
            pgid = server_pgid(t.settings)
            idle = tree_memory(pgid, pss=False)[0] if pgid else 0
            say(f"{t.target.name}: uploading {size_mb:,.0f} MB through the server")
            with RssPeak(pgid) as up_peak:
                began = time.perf_counter()
                client.log_artifact(run, str(blob), artifact_path="big")
                up_s = time.perf_counter() - began
            say(f"{t.target.name}: downloading it")
            dst = Path(tempfile.mkdtemp(dir=blob.parent))
            with RssPeak(pgid) as down_peak:
                began = time.perf_counter()
                got = Path(client.download_artifacts(run, f"big/{blob.name}", str(dst)))
                down_s = time.perf_counter() - began
            same = got.stat().st_size == blob.stat().st_size
            shutil.rmtree(dst, ignore_errors=True)
            for stored in t.settings.state_path.rglob(blob.name):  # the server's copy: disk for the next one
                stored.unlink()
            limit = doc["artifact_limit"][0] if doc["artifact_limit"] else {}
            for direction, seconds, peak in (("upload", up_s, up_peak.peak), ("download", down_s, down_peak.peak)):
                doc["figures"].append(
                    _figure(
                        t,
                        f"{blob.stat().st_size // 2**20:,} MiB artifact {direction}",
                        "proxied",
                        {
                            "n": 1,
                            "errors": 0 if same else 1,
                            "error_examples": [] if same else ["the downloaded file differs in size"],
                            "p50_ms": math.nan,
                            "rate": size_mb / seconds,
                            "unit": "MB/s",
                            "idle_rss": idle,
                            "peak_rss": peak,
                            "server_cpu_ms": math.nan,
                        },
                        limit={
                            "rate": limit.get(f"{direction}_mb_s", math.nan),
                            "what": "loopback HTTP copy of the same bytes",
                        },
                    )
                )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def loopback_copy(blob: Path, folder: Path) -> dict[str, Any]:
    """The same bytes PUT to and GOT from a plain Python HTTP server on loopback that streams them
    to and from a file on the same disk, 1 MiB at a time: what moving them costs without MLflow."""
    import requests

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "copy.bin"

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            left = int(self.headers["Content-Length"])
            with open(target, "wb") as fh:
                while left > 0:
                    chunk = self.rfile.read(min(2**20, left))
                    if not chunk:
                        break
                    fh.write(chunk)
                    left -= len(chunk)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(target.stat().st_size))
            self.end_headers()
            with open(target, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile, 2**20)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/blob"
    size_mb = blob.stat().st_size / 1e6
    try:
        with open(blob, "rb") as fh:
            began = time.perf_counter()
            requests.put(url, data=fh, timeout=1200).raise_for_status()
            up_s = time.perf_counter() - began
        began = time.perf_counter()
        with requests.get(url, stream=True, timeout=1200) as resp, open(folder / "back.bin", "wb") as out:
            resp.raise_for_status()
            for chunk in resp.iter_content(2**20):
                out.write(chunk)
        down_s = time.perf_counter() - began
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"what": "loopback HTTP PUT/GET (Python http.server, 1 MiB chunks, same disk)", "upload_mb_s": size_mb / up_s,
            "download_mb_s": size_mb / down_s}  # fmt: skip


# --- targets -----------------------------------------------------------------------------------


def scale_targets(doc: dict) -> list[dict[str, Any]]:
    """The issue's scale targets, per backend: search_runs p50 at the largest store, the upload rate
    against loopback, and the server's peak RSS during the upload against its idle RSS."""
    out = []
    figures = doc["figures"]
    for backend in doc["meta"]["backends"]:
        mine = [f for f in figures if f["backend"] == backend]
        largest = max((f["scale"] for f in mine if f["figure"] == "search_runs"), key=_scale_key, default=None)

        def pick(setup: str, figure: str, scale: str | None = None) -> dict | None:
            return next(
                (
                    f
                    for f in mine
                    if f["setup"] == setup and f["figure"] == figure and (scale is None or f["scale"] == scale)
                ),
                None,
            )

        tuned, stock = pick("tuned", "search_runs", largest), pick("stock", "search_runs", largest)
        value = ratio(tuned["p50_ms"], stock["p50_ms"]) if tuned and stock else math.nan
        bound = ratio(tuned["limit_p50_ms"], tuned["p50_ms"]) if tuned else math.nan
        out.append(_target(backend, f"search_runs p50 at {largest}, tuned/stock", "<=", 0.5, value,
                           f"the same SQL takes {bound:.0%} of tuned's p50" if not math.isnan(bound) else ""))  # fmt: skip
        upload = next((f for f in mine if f["setup"] == "tuned" and f["figure"].endswith("artifact upload")), None)
        out.append(_target(backend, "artifact upload rate / loopback copy rate (tuned)", ">=", 0.5,
                           ratio(upload["rate"], upload["limit_rate"]) if upload else math.nan, ""))  # fmt: skip
        out.append(_target(backend, "server peak RSS during the upload / idle RSS (tuned)", "<", 2.0,
                           ratio(upload["peak_rss"], upload["idle_rss"]) if upload else math.nan, ""))  # fmt: skip
    return out


def _target(backend: str, name: str, direction: str, threshold: float, value: float, where: str) -> dict[str, Any]:
    met = not math.isnan(value) and (
        value <= threshold if direction == "<=" else value < threshold if direction == "<" else value >= threshold
    )
    return {
        "target": name,
        "backend": backend,
        "direction": direction,
        "threshold": threshold,
        "value": value,
        "where": where,
        "met": met,
    }


def _scale_key(scale: str) -> int:
    return int(scale.split(" ")[0].replace(",", ""))


def median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def load_scale_spec(preset: str, path: Path | str | None = None) -> ScaleSpec | None:
    """The preset as a ScaleSpec when benchmarks/workload.yaml marks it `kind: scale`, else None."""
    import yaml

    from tasks.libs.bench.workload import SPEC_FILE

    path = Path(path) if path else SPEC_FILE
    try:
        presets = (yaml.safe_load(path.read_text()) or {}).get("presets") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the workload file ({exc})") from None
    data = presets.get(preset)
    if not isinstance(data, dict) or data.get("kind") != "scale":
        return None
    return ScaleSpec.from_preset(preset, data)
