"""`cluster.up`, `cluster.down` and `cluster.status`: the pieces started and stopped in the order that works.

up:   the standby (then synchronous), PgBouncer, the artifact services, Redis (MLflow's job
      queues, when jobs are on), replica 0 alone (it
      may create the schema), the other replicas together, HAProxy (until it sees every
      replica UP), postgres_exporter, the Prometheus files checked with promtool.
      Idempotent: what runs and answers is reused, a dead replica is started again on its port.
down: the reverse; synchronous replication is cleared before the standby stops, or every
      write on the primary would wait for it. PostgreSQL itself is `db.start`'s and stays.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tasks.libs.cluster.haproxy import BACKEND, FrontendTls, Haproxy
from tasks.libs.cluster.pgbouncer import PgBouncer, connection_budget, server_limits
from tasks.libs.cluster.plan import (
    ReplicaPlan,
    cluster_dir,
    lb_url,
    recorded_replicas,
    replica_plans,
    require_cluster_backend,
)
from tasks.libs.cluster.redis import Redis, needs_redis
from tasks.libs.cluster.replicas import (
    MAX_OVERFLOW,
    POOL_SIZE,
    StoreRoute,
    clear_leftovers,
    pool_fitting_budget,
    replica_state,
    start_replica,
    stop_replica,
    worst_case_connections,
)
from tasks.libs.cluster.standby import Standby
from tasks.libs.core.certificates import fingerprint
from tasks.libs.core.errors import UserError
from tasks.libs.core.programs import require_module, require_program
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import client_ca, cluster_tls, ensure_tls, haproxy_pem
from tasks.libs.monitoring.exporter import PostgresExporter
from tasks.libs.monitoring.prometheus import PrometheusFiles, ScrapeTargets, write_prometheus_files
from tasks.libs.postgres.connection import check_reachable, pg_connection
from tasks.libs.postgres.providers import provider_for
from tasks.libs.server.command import is_loopback
from tasks.libs.server.sidecars import (
    artifact_services_status,
    start_artifact_services,
    stop_artifact_services,
)

Say = Callable[[str], None]


@dataclass
class UpResult:
    url: str
    seconds: float
    started: list[str] = field(default_factory=list)  # replicas started by this call
    prometheus: PrometheusFiles | None = None


def cluster_up(settings: Settings, *, say: Say = print) -> UpResult:
    began = time.monotonic()
    _preflight(settings)
    cfg = settings.cluster
    route = StoreRoute(settings.postgres.host, settings.postgres.port)
    if cfg.read_replica.enabled:
        say(Standby(settings).start())
        route = StoreRoute(route.host, route.port, read_replica_port=cfg.read_replica.port)
    if cfg.pgbouncer.enabled:
        say(PgBouncer(settings).start(worst_case_clients=worst_case_connections(settings, cfg.replicas)))
        route = StoreRoute(cfg.pgbouncer.host, cfg.pgbouncer.port, route.read_replica_port)
    else:
        route = StoreRoute(route.host, route.port, route.read_replica_port, _pool_env(settings, say))
    for line in start_artifact_services(settings, "cluster"):
        say(line)
    if needs_redis(settings):
        say(Redis(settings).start())

    plans = replica_plans(settings)
    for extra in [p for p in recorded_replicas(settings) if p.index >= cfg.replicas]:
        say(stop_replica(settings, extra) + " (beyond cluster.replicas)")
    down = [p for p in plans if not replica_state(settings, p).healthy]
    started = [p.name for p in down]
    for plan in plans:
        if plan not in down:
            say(f"{plan.name} already running on port {plan.port}; reused")
    for plan in down:
        clear_leftovers(settings, plan)
    if down and down[0].index == 0:  # r0 first and alone: on an empty database it creates the schema
        _start_replicas(settings, down[:1], route, say)
        down = down[1:]
    _start_replicas(settings, down, route, say)

    lb = Haproxy(settings)
    say(lb.ensure(plans, _frontend_tls(settings, say)))
    if not lb.wait_all_up([p.name for p in plans], timeout=cfg.start_timeout):
        states = {name: s["status"] for name, s in lb.states().items()}
        raise UserError(f"HAProxy does not see every replica UP: {states}; `inv cluster.status` for more")
    exporter_target = None
    if settings.monitoring.postgres_exporter.enabled:
        exporter = PostgresExporter(settings)
        say(exporter.start())
        exporter_target = exporter.target
    targets = ScrapeTargets(
        mlflow=[f"{p.host}:{p.port}" for p in plans],
        haproxy=f"127.0.0.1:{cfg.lb.stats_port}",
        haproxy_backend=BACKEND,
        postgres_exporter=exporter_target,
    )
    files = write_prometheus_files(
        settings.state_path / "monitoring", targets, settings.monitoring, postgres=True, check=True
    )
    say(f"Prometheus files in {files.config.parent}: " + "; ".join(files.checked))
    return UpResult(lb_url(settings), time.monotonic() - began, started, files)


def cluster_down(settings: Settings, *, wipe: bool = False) -> list[str]:
    """Stop everything cluster.up started (also what a failed up left), in reverse order."""
    done = [Haproxy(settings).stop()]
    plans = recorded_replicas(settings)
    with ThreadPoolExecutor(max(1, len(plans))) as pool:
        done += list(pool.map(lambda p: stop_replica(settings, p), plans))
    done.append(Redis(settings).stop())
    done.append(PostgresExporter(settings).stop())
    done.append(PgBouncer(settings).stop())
    standby = _standby_if_any(settings)
    if standby:
        done += standby.stop(wipe=wipe)
    done += stop_artifact_services(settings, "cluster")
    if wipe:
        shutil.rmtree(cluster_dir(settings), ignore_errors=True)
        done.append(f"removed {cluster_dir(settings)} (logs, pid files, HAProxy config)")
    return [line for line in done if line]


def cluster_status(settings: Settings) -> dict[str, Any]:
    """Each replica as its process group, /health and HAProxy see it; the LB, PgBouncer, the standby."""
    lb = Haproxy(settings)
    lb_record = lb.running()
    try:
        lb_states = lb.states() if lb_record else {}
    except OSError:
        lb_states = {}
    plans = {p.name: p for p in [*replica_plans(settings), *recorded_replicas(settings)]}
    rows = []
    for plan in sorted(plans.values(), key=lambda p: p.index):
        state = replica_state(settings, plan)
        seen = lb_states.get(plan.name, {})
        if not state.record and not seen:
            continue
        rows.append(
            {
                "replica": plan.name,
                "port": plan.port,
                "pid": state.pid or "-",
                "processes": len(state.members) if state.alive else "dead",
                "health": "ok" if state.healthy else "no answer",
                "haproxy": seen.get("status", "-"),
                "check": seen.get("check", "-"),
                "sessions": seen.get("sessions_total", "-"),
                "5xx": seen.get("http_5xx", "-"),
                "redispatched": seen.get("redispatches", "-"),
            }
        )
    info: dict[str, Any] = {
        "load balancer": f"{lb_url(settings)} (pid {lb_record.pid}), stats http://127.0.0.1:{settings.cluster.lb.stats_port}/stats"
        if lb_record
        else "not running",
    }
    if lb_record and cluster_tls(settings):
        ca = client_ca(settings)
        info["tls"] = f"HAProxy terminates it; clients trust {ca or 'the system trust store'}; replicas plain HTTP"
    bouncer = PgBouncer(settings)
    if bouncer.running():
        try:
            pools = [p for p in bouncer.show("POOLS") if p["database"] == settings.postgres.database]
            info["pgbouncer"] = (
                "; ".join(
                    f"clients active {p['cl_active']} waiting {p['cl_waiting']}, PostgreSQL active {p['sv_active']} idle {p['sv_idle']}"
                    for p in pools
                )
                or "running, no pool yet"
            )
        except Exception as exc:  # the console refused: say so, the rest of the status still counts
            info["pgbouncer"] = f"running, SHOW POOLS failed ({type(exc).__name__})"
    standby = _standby_if_any(settings)
    if standby:
        info.update(standby.status())
    info.update(artifact_services_status(settings))
    info.update(Redis(settings).status())
    exporter = PostgresExporter(settings).running()
    if exporter:
        info["postgres_exporter"] = f"127.0.0.1:{exporter.port} (pid {exporter.pid})"
    monitoring = settings.state_path / "monitoring" / "prometheus.yml"
    if monitoring.exists():
        info["prometheus config"] = str(monitoring)
    running = bool(lb_record or any(r["processes"] != "dead" for r in rows))
    degraded = [f"{r['replica']} {r['haproxy']}" for r in rows if r["haproxy"] != "UP" or r["health"] != "ok"]
    return {"replicas": rows, "info": info, "running": running, "degraded": degraded}


# --- helpers -------------------------------------------------------------------------------


def _preflight(settings: Settings) -> None:
    """Everything that can be known wrong before anything starts: one line each."""
    require_cluster_backend(settings)
    cfg = settings.cluster
    if cfg.read_replica.enabled and provider_for(settings).name != "local":
        raise UserError("cluster.read_replica needs postgres.provider local (a standby beside our own cluster)")
    require_program("haproxy", "haproxy")
    if cfg.pgbouncer.enabled:
        require_program("pgbouncer", "pgbouncer")
    if settings.server.metrics:
        require_module("prometheus_flask_exporter", "server.metrics")
    if needs_redis(settings):
        require_program("redis-server", "redis-server")
        require_module("redis", "MLflow's jobs on Redis (cluster.redis)")
    if settings.monitoring.postgres_exporter.enabled:
        require_program("prometheus-postgres-exporter", "prometheus-postgres-exporter")
    if cluster_tls(settings) and settings.artifacts.store == "s3" and settings.artifacts.mode == "split":
        raise UserError(
            "cluster.tls with artifacts.mode split: clients would reach the artifacts server directly, around "
            "HAProxy's TLS; use artifacts.mode proxied (the replicas stream artifacts) or turn cluster.tls off"
        )
    problem = check_reachable(settings)
    if problem:
        raise UserError(f"PostgreSQL is not usable ({problem}); run `inv db.start` first")


def _frontend_tls(settings: Settings, say: Say) -> FrontendTls | None:
    """cluster.tls: the certificate HAProxy serves (server.tls's files, or the tool's CA made/renewed now)."""
    if not cluster_tls(settings):
        return None
    files, notes = ensure_tls(settings)
    for note in notes:
        say(note)
    if not is_loopback(settings.cluster.host):
        say(
            f"WARNING: HAProxy terminates TLS but the replicas answer plain HTTP on {settings.cluster.host} "
            "(cluster.host), reachable from other machines around it; `inv test.security` fails this"
        )
    say(f"TLS: HAProxy serves {files.cert}; clients trust {files.ca or 'the system trust store'}")
    return FrontendTls(haproxy_pem(settings, files), fingerprint(files.cert))


def _pool_env(settings: Settings, say: Say) -> tuple[tuple[str, str], ...]:
    """Without PgBouncer, smaller SQLAlchemy pools when full ones could pass max_connections."""
    with pg_connection(settings, dbname="postgres") as conn:
        budget = connection_budget(*server_limits(conn))
    fitted = pool_fitting_budget(settings, settings.cluster.replicas, budget)
    if fitted is None:
        return ()
    say(
        f"SQLAlchemy pools cut to {fitted[0]} + {fitted[1]} overflow per engine so that "
        f"{settings.cluster.replicas} replicas stay within {budget} PostgreSQL connections (or enable cluster.pgbouncer)"
    )
    return ((POOL_SIZE, str(fitted[0])), (MAX_OVERFLOW, str(fitted[1])))


def _start_replicas(settings: Settings, plans: list[ReplicaPlan], route: StoreRoute, say: Say) -> None:
    if not plans:
        return
    began = time.monotonic()

    def one(plan: ReplicaPlan) -> str | None:
        try:
            start_replica(settings, plan, route)
            return None
        except UserError as exc:
            return str(exc)

    with ThreadPoolExecutor(len(plans)) as pool:
        problems = [p for p in pool.map(one, plans) if p]
    if problems:
        raise UserError(
            "; ".join(problems[:1])
            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
            + "\n`inv cluster.down` stops what did start"
        )
    names = ", ".join(p.name for p in plans)
    say(f"{names} ready in {time.monotonic() - began:.1f} s (ports {', '.join(str(p.port) for p in plans)})")


def _standby_if_any(settings: Settings) -> Standby | None:
    """The standby when one is configured or was made (settings may have changed since)."""
    if settings.postgres.provider not in ("local", "auto"):
        return None
    try:
        standby = Standby(settings)
    except UserError:
        return None
    if settings.cluster.read_replica.enabled or standby.running() or standby.data_dir.exists():
        return standby
    return None
