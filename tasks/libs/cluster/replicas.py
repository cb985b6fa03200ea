"""The cluster's `mlflow server` replicas: each runs what `server.start` runs, on its own port.

Facts this relies on (MLflow 3.17.2, measured here):
- Two servers starting at once on an empty database both create the schema, and one dies
  (UniqueViolation on pg_type "experiments"): replica 0 starts alone, the rest after it.
- A replica must list the load balancer's host:port in --allowed-hosts, or every request
  through HAProxy is "403 Invalid Host header".
- Killing only the `mlflow server` leader leaves uvicorn and its workers serving: a replica
  is judged by its process group's members and /health, and stopped as a whole group.
- The read replica's URI goes in MLFLOW_READ_REPLICA_BACKEND_STORE_URI (the CLI's env twin of
  --read-replica-backend-store-uri), without its password: libpq reads PGPASSWORD, and the
  standby is a copy of the primary with the same roles and passwords.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
from sqlalchemy.engine import make_url

from tasks.libs.cluster.plan import ReplicaPlan
from tasks.libs.core.credentials import store_uri_and_password_env
from tasks.libs.core.managed import Listener, ManagedProcess
from tasks.libs.core.settings import Settings
from tasks.libs.server.command import server_env
from tasks.libs.server.control import ServerPaths, ServerRecord, launch_server, server_process
from tasks.libs.server.probes import health

POOL_SIZE = "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"
MAX_OVERFLOW = "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"
# MLflow's own defaults when the variables are not set (SQLAlchemy QueuePool).
DEFAULT_POOL, DEFAULT_OVERFLOW = 5, 10
PORT_FIX = "set cluster.first_port"


@dataclass(frozen=True)
class StoreRoute:
    """Where the replicas' connections go: the primary or PgBouncer, and the standby for reads."""

    host: str
    port: int
    read_replica_port: int | None = None
    pool_env: tuple[tuple[str, str], ...] = ()


@dataclass
class ReplicaState:
    plan: ReplicaPlan
    record: ServerRecord | None
    members: list[psutil.Process]
    healthy: bool

    @property
    def alive(self) -> bool:
        return bool(self.members)

    @property
    def pid(self) -> int | None:
        return self.record.pid if self.record else None


def workers(settings: Settings) -> int:
    return settings.cluster.workers or settings.server.workers


def engines_per_worker(settings: Settings) -> int:
    """SQLAlchemy engines one uvicorn worker opens: tracking and model registry (separate engine
    caches), plus basic auth's store when sign-in is on."""
    return 3 if settings.server.auth.enabled else 2


def configured_pool(settings: Settings) -> tuple[int, int]:
    env = settings.server.env
    return int(env.get(POOL_SIZE, DEFAULT_POOL)), int(env.get(MAX_OVERFLOW, DEFAULT_OVERFLOW))


def worst_case_connections(settings: Settings, replicas: int, pool: tuple[int, int] | None = None) -> int:
    """Connections the replicas may open when every pool is full."""
    size, overflow = pool or configured_pool(settings)
    return replicas * workers(settings) * engines_per_worker(settings) * (size + overflow)


def pool_fitting_budget(settings: Settings, replicas: int, budget: int) -> tuple[int, int] | None:
    """Without PgBouncer: smaller SQLAlchemy pools when full ones would pass the budget (None: they fit)."""
    if worst_case_connections(settings, replicas) <= budget:
        return None
    per_engine = max(2, budget // (replicas * workers(settings) * engines_per_worker(settings)))
    size = max(1, per_engine // 2)
    return size, per_engine - size


def replica_settings(settings: Settings, plan: ReplicaPlan) -> Settings:
    """server.start's settings, moved to the replica's port, allowing the load balancer's host;
    plain HTTP (HAProxy terminates TLS in front of it, on the same machine)."""
    s = settings.model_copy(deep=True)
    s.server.host, s.server.port, s.server.workers = plan.host, plan.port, workers(settings)
    s.server.tls.enabled = False
    lb = settings.cluster.lb
    names = dict.fromkeys(["localhost", "127.0.0.1", plan.host, lb.host])
    s.server.allowed_hosts = [n for name in names for n in (name, f"{name}:{plan.port}", f"{name}:{lb.port}")]
    return s


def replica_env(settings: Settings, plan: ReplicaPlan, route: StoreRoute) -> dict[str, str]:
    s = replica_settings(settings, plan)
    env = server_env(s)
    env.update(dict(route.pool_env))
    uri, _ = store_uri_and_password_env(settings)
    url = make_url(uri)
    env["MLFLOW_BACKEND_STORE_URI"] = url.set(host=route.host, port=route.port).render_as_string(hide_password=False)
    if route.read_replica_port is not None:
        # the standby on the primary's host: reads that may lag (see cluster.read_replica.synchronous)
        read = url.set(port=route.read_replica_port).render_as_string(hide_password=False)
        env["MLFLOW_READ_REPLICA_BACKEND_STORE_URI"] = read
    return env


def replica_process(settings: Settings, plan: ReplicaPlan) -> ManagedProcess[ServerRecord]:
    return server_process(settings, name=plan.name, paths=ServerPaths.in_folder(plan.folder))


def replica_state(settings: Settings, plan: ReplicaPlan) -> ReplicaState:
    process = replica_process(settings, plan)
    record = process.record()
    members = process.members(record) if record else []
    return ReplicaState(plan, record, members, bool(members) and health(plan.url))


def start_replica(settings: Settings, plan: ReplicaPlan, route: StoreRoute) -> ServerRecord:
    """Start one replica as server.start starts a server, on its own port, folder and environment."""
    return launch_server(
        replica_settings(settings, plan),
        replica_process(settings, plan),
        env=replica_env(settings, plan, route),
        cwd=plan.folder,
        timeout=settings.cluster.start_timeout,
        port_fix=PORT_FIX,
        metrics_path=plan.metrics_dir,
    )


def stop_replica(settings: Settings, plan: ReplicaPlan) -> str:
    """Stop the replica's whole group (also when only its leader died); a message."""
    return replica_process(settings, plan).stop(listeners=[Listener(plan.host, plan.port, PORT_FIX)])


def clear_leftovers(settings: Settings, plan: ReplicaPlan) -> None:
    """A replica whose group lives on but does not answer (its leader died, say) is stopped before
    it is started again; a stale pid file goes."""
    process = replica_process(settings, plan)
    if process.running() and not health(plan.url):
        process.stop()
