"""Timed calls: a client call (search_call, get_run_call, history_call) or the same query as SQL
straight on the store (raw_search, raw_get_run, raw_history), called N times by timed_calls; a
figure is one such measurement beside its limit."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from tasks.libs.bench.scale_seed import store_engine
from tasks.libs.bench.scale_spec import ScaleTarget
from tasks.libs.bench.stats import percentile
from tasks.libs.bench.workload import group_cpu_seconds
from tasks.libs.core.settings import Settings

SEARCH_FILTER = "metrics.m0 > 0.5 and params.p0 = 'v3'"
SEARCH_ORDER = "metrics.m1 DESC"


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
            holder["cm"] = store_engine(settings)
            engine = holder["cm"].__enter__()
            holder["conn"] = engine.connect()
        return fn(holder["conn"], i) if indexed else fn(holder["conn"])

    def close() -> None:
        if "conn" in holder:
            holder["conn"].close()
            holder["cm"].__exit__(None, None, None)

    call.close = close  # type: ignore[attr-defined]
    return call


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


def figure(
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
