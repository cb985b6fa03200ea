"""`inv bench --target cluster`: the workload through HAProxy in front of N replicas, beside one
tuned server, each on a fresh database of one throwaway local PostgreSQL.

Both targets start together and run interleaved, repetition by repetition (the order swaps
each time), so other work on the machine falls on both alike. On 2 cores expect no
speed-up: 2 workers and 8 clients already saturate them; the report gives the ratio as it
comes out, and what the cluster costs in memory.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from tasks.libs.bench.clients import ClientPool, prepare_experiments, run_workload
from tasks.libs.bench.runner import bench_settings
from tasks.libs.bench.stats import cell_stats, ratio
from tasks.libs.bench.workload import OPS, WorkloadSpec
from tasks.libs.cluster.haproxy import Haproxy
from tasks.libs.cluster.orchestrate import cluster_down, cluster_up
from tasks.libs.cluster.plan import lb_url, replica_plans
from tasks.libs.cluster.replicas import replica_process
from tasks.libs.core.managed import ManagedProcess
from tasks.libs.core.processes import free_port, free_ports_in_a_row
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import trust_bundle, trust_for_clients
from tasks.libs.postgres.connection import recreate_database
from tasks.libs.postgres.providers import provider_for
from tasks.libs.reporting.formats import number, table
from tasks.libs.server.control import server_process, start_server, stop_server

TARGETS = ("single", "cluster")


def run_cluster_bench(
    base: Settings, *, spec: WorkloadSpec, replicas: int, client_mode: str, progress: Callable[[str], None]
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mlflow-ops-bench-cluster-", dir="/tmp"))
    root.chmod(0o755)  # the postgres OS user enters it
    began, started_at = time.monotonic(), datetime.now(timezone.utc)
    password = secrets.token_urlsafe(18)
    pg_port = free_port()
    single = cluster_bench_settings(base, root / "single", password, pg_port, "mlflow_bench_single", replicas)
    cluster = cluster_bench_settings(base, root / "cluster", password, pg_port, "mlflow_bench_cluster", replicas)
    db = provider_for(single)
    pool: ClientPool | None = None
    restore_trust = trust_for_clients(trust_bundle([single, cluster], root / "ca-bundle.pem"))
    reps: dict[tuple[str, int, str], list[dict]] = {}
    memory: dict[str, int] = {}
    try:
        progress("starting PostgreSQL")
        db.start()
        for s in (single, cluster):
            recreate_database(s)
        progress(f"starting one server and a cluster of {replicas} ({time.monotonic() - began:.0f} s)")
        with ThreadPoolExecutor(3) as ex:
            pool_future = ex.submit(
                ClientPool, max(spec.clients), mode=client_mode, request_timeout_s=spec.request_timeout_s
            )
            single_started = ex.submit(start_server, single)
            cluster_started = ex.submit(cluster_up, cluster, say=lambda _: None)
            single_started.result()
            cluster_started.result()
            pool = pool_future.result()
        urls = {"single": single.server.url, "cluster": lb_url(cluster)}
        experiments = {t: prepare_experiments(urls[t], spec, label=t) for t in TARGETS}
        for t in TARGETS:  # untimed: warm every worker and connection
            run_workload(urls[t], spec, clients=spec.warmup_clients, pool=pool, ops=spec.warmup,
                         experiment_id=experiments[t][0], seed_experiment_id=experiments[t][1])  # fmt: skip
        memory = {"single": _rss_mb(single, "single"), "cluster": _rss_mb(cluster, "cluster")}
        for rep in range(spec.repetitions):
            for clients in spec.clients:
                order = TARGETS if (rep + clients) % 2 == 0 else TARGETS[::-1]
                for t in order:
                    progress(
                        f"rep {rep + 1}/{spec.repetitions} {t} x{clients} clients ({time.monotonic() - began:.0f} s)"
                    )
                    result = run_workload(urls[t], spec, clients=clients, pool=pool,
                                          experiment_id=experiments[t][0], seed_experiment_id=experiments[t][1])  # fmt: skip
                    for op, r in result.ops.items():
                        reps.setdefault((t, clients, op), []).append(
                            {"latencies": r.latencies, "errors": r.errors, "throughput": r.throughput}
                        )
    finally:
        progress("stopping")
        if pool:
            pool.close()
        stop_server(single)
        cluster_down(cluster, wipe=True)
        db.stop()
        restore_trust()
        shutil.rmtree(root, ignore_errors=True)
        progress("")
    cells = {key: cell_stats(r) for key, r in reps.items()}
    rows = []
    for clients in spec.clients:
        for op in OPS:
            one, many = cells.get(("single", clients, op)), cells.get(("cluster", clients, op))
            if one and many:
                rows.append({"clients": clients, "op": op, "single": one, "cluster": many,
                             "throughput_ratio": ratio(many["throughput"], one["throughput"]),
                             "p50_ratio": ratio(many["p50_ms"], one["p50_ms"])})  # fmt: skip
    return {
        "meta": {
            "preset": spec.name,
            "started_at": started_at.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - began, 1),
            "replicas": replicas,
            "workers_per_replica": cluster.cluster.workers or cluster.server.workers,
            "single_workers": single.server.workers,
            "pgbouncer": cluster.cluster.pgbouncer.enabled,
            "read_replica": cluster.cluster.read_replica.enabled,
            "cpus": psutil.cpu_count(),
            "load_average": [round(x, 1) for x in psutil.getloadavg()],
        },
        "memory_mb": memory,
        "rows": rows,
    }


def cluster_bench_settings(
    base: Settings, state: Path, password: str, pg_port: int, database: str, replicas: int
) -> Settings:
    """The bench's settings for one set-up (runner.bench_settings), with the cluster's listeners on
    free ports of their own and PostgreSQL as the store."""
    s = bench_settings(base, state, password, database=database, pg_port=pg_port)
    s.backend = "postgres"
    c = s.cluster
    c.replicas, c.host, c.first_port = replicas, "127.0.0.1", free_ports_in_a_row(replicas)
    c.lb.host, c.lb.port, c.lb.stats_port = "127.0.0.1", free_port(), free_port()
    c.pgbouncer.port, c.read_replica.port, c.redis.port = free_port(), free_port(), free_port()
    c.start_timeout = max(c.start_timeout, 300)
    s.monitoring.postgres_exporter.enabled = False
    return s


def _rss_mb(settings: Settings, target: str) -> int:
    """Resident memory of everything the target runs (server groups, HAProxy), in MB."""
    if target == "single":
        processes: list[ManagedProcess] = [server_process(settings)]
    else:
        processes = [*(replica_process(settings, p) for p in replica_plans(settings)), Haproxy(settings).process]
    total = 0
    for process in processes:
        for proc in process.members():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
    return round(total / 1024 / 1024)


def cluster_table(doc: dict[str, Any]) -> str:
    """The terminal table: each op and client count, single server beside the cluster."""
    rows = [
        [r["clients"], r["op"],
         number(r["single"]["p50_ms"]), number(r["single"]["p95_ms"]), number(r["single"]["throughput"]), r["single"]["errors"],
         number(r["cluster"]["p50_ms"]), number(r["cluster"]["p95_ms"]), number(r["cluster"]["throughput"]), r["cluster"]["errors"],
         f"{r['throughput_ratio']:.2f}x"]
        for r in doc["rows"]
    ]  # fmt: skip
    meta = doc["meta"]
    headers = ["clients", "op", "single p50 ms", "p95", "calls/s", "err",
               "cluster p50 ms", "p95", "calls/s", "err", "cluster/single calls/s"]  # fmt: skip
    head = (
        f"one server ({meta['single_workers']} workers, {doc['memory_mb'].get('single', '?')} MB) vs "
        f"{meta['replicas']} replicas x {meta['workers_per_replica']} workers behind HAProxy "
        f"({doc['memory_mb'].get('cluster', '?')} MB); {meta['cpus']} CPUs, load {meta['load_average']}; "
        f"preset {meta['preset']}, {meta['duration_s']} s"
    )
    return head + "\n" + table(rows, headers)


def write_cluster_outputs(doc: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    (folder / "report.md").write_text("# bench --target cluster\n\n```\n" + cluster_table(doc) + "\n```\n")
    return folder
