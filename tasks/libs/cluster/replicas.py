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
from tasks.libs.core.credentials import backend_store_uri, known_secrets, store_uri_and_password_env
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import group_members, port_holder, port_is_free, start_group, stop_group, tail
from tasks.libs.core.redact import redact
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_ready, wait_until
from tasks.libs.server.auth import basic_auth_header
from tasks.libs.server.command import server_command, server_env
from tasks.libs.server.control import ServerRecord, prepare_metrics_dir
from tasks.libs.server.probes import health, store_answers

POOL_SIZE = "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"
MAX_OVERFLOW = "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"
# MLflow's own defaults when the variables are not set (SQLAlchemy QueuePool).
DEFAULT_POOL, DEFAULT_OVERFLOW = 5, 10


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


def replica_state(plan: ReplicaPlan) -> ReplicaState:
    record = ServerRecord.read(plan.pid_file)
    members = our_members(record) if record else []
    return ReplicaState(plan, record, members, bool(members) and health(plan.url))


def our_members(record: ServerRecord) -> list[psutil.Process]:
    """The live processes of the replica's group: a group id is its leader's pid, so a member
    started before our leader was not started by us (the pid was reused) and is never ours."""
    out = []
    for proc in group_members(record.pgid):
        try:
            if proc.create_time() >= record.create_time - 1:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def start_replica(settings: Settings, plan: ReplicaPlan, route: StoreRoute) -> ServerRecord:
    """Start one replica and wait until /health and a store call answer; stopped whole on failure."""
    s = replica_settings(settings, plan)
    if not port_is_free(plan.host, plan.port):
        raise UserError(
            f"{plan.name}: port {plan.port} is in use by {port_holder(plan.port)}; stop that or set cluster.first_port"
        )
    plan.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if s.server.metrics:
        prepare_metrics_dir(plan.metrics_dir)
    proc = start_group(
        server_command(s, metrics_path=plan.metrics_dir),
        env=replica_env(settings, plan, route),
        log_path=plan.log_file,
        cwd=plan.folder,
    )
    record = ServerRecord.of(
        proc.pid,
        backend="postgres",
        host=plan.host,
        port=plan.port,
        url=plan.url,
        store=backend_store_uri(settings),
        log=str(plan.log_file),
    )
    record.write(plan.pid_file)
    headers = basic_auth_header(settings)

    def probe() -> str | None:
        if proc.poll() is not None:
            raise UserError(f"{plan.name} exited during start-up")
        if not health(plan.url):
            return "/health does not answer"
        return None if store_answers(plan.url, headers=headers) else "/health answers, a store call does not"

    try:
        wait_ready(probe, timeout=settings.cluster.start_timeout, what=plan.name)
    except UserError as exc:
        stop_group(record.pgid, grace=settings.server.stop_grace)
        plan.pid_file.unlink(missing_ok=True)
        log = redact(tail(plan.log_file, 12), known_secrets(settings))
        raise UserError(f"{exc}\n--- last lines of {plan.log_file} ---\n{log}") from None
    return record


def stop_replica(settings: Settings, plan: ReplicaPlan) -> str:
    """Stop the replica's whole group (also when only its leader died); a message."""
    record = ServerRecord.read(plan.pid_file)
    if record is None:
        return f"{plan.name} is not running"
    if not our_members(record):
        plan.pid_file.unlink(missing_ok=True)
        return f"{plan.name} was not running (removed its stale pid file)"
    how = stop_group(record.pgid, grace=settings.server.stop_grace)
    plan.pid_file.unlink(missing_ok=True)
    wait_until(lambda: port_is_free(plan.host, plan.port), timeout=10)
    return f"{plan.name} stopped (pid {record.pid}, {how})"


def clear_leftovers(settings: Settings, plan: ReplicaPlan) -> None:
    """A replica whose leader died but whose workers live on is stopped before it is started again."""
    record = ServerRecord.read(plan.pid_file)
    if record and our_members(record) and not health(plan.url):
        stop_group(record.pgid, grace=settings.server.stop_grace)
    if record and not our_members(record):
        plan.pid_file.unlink(missing_ok=True)
