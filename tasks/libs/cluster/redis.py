"""Redis (Debian's redis-server 7) for MLflow's jobs across the cluster's replicas.

MLflow 3.17 keeps its huey job queues in SQLite files under one server's /dev/shm unless
MLFLOW_SERVER_JOB_HUEY_REDIS_URL names a Redis; with it, every replica enqueues into and consumes
from the same queues. Its executor engine (our single-server default) supports one replica only
(MLflow's own note on MLFLOW_SERVER_JOB_EXECUTION_ENGINE), so the cluster runs huey on Redis, with
periodic tasks (MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS) on replica 0 alone, as MLflow asks.

Facts this relies on (measured here): `redis-server CONFIG` stays in the foreground as one
process (daemonize no), answers PING within a second and exits on SIGTERM. Debian's package also
installs a redis-server service on 6379 that systemd may start; we never use or touch it.
No persistence (save "", appendonly no): the queue only carries job ids; MLflow keeps each job's
state in the tracking database, and its job runner re-enqueues unfinished jobs when it starts.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from tasks.libs.cluster.plan import ReplicaPlan, cluster_dir
from tasks.libs.core.managed import Launch, Listener, ManagedProcess
from tasks.libs.core.processes import ProcessRecord
from tasks.libs.core.programs import require_program
from tasks.libs.core.settings import Settings

REDIS_URL_ENV = "MLFLOW_SERVER_JOB_HUEY_REDIS_URL"
PERIODIC_ENV = "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS"
ENGINE_ENV = "MLFLOW_SERVER_JOB_EXECUTION_ENGINE"


@dataclass
class RedisRecord(ProcessRecord):
    host: str
    port: int


def redis_url(settings: Settings) -> str:
    cfg = settings.cluster.redis
    return f"redis://{cfg.host}:{cfg.port}/0"


def needs_redis(settings: Settings) -> bool:
    """Whether cluster.up runs Redis: jobs are on and cluster.redis is enabled."""
    return settings.server.job_execution and settings.cluster.redis.enabled


def replica_job_env(settings: Settings, plan: ReplicaPlan, env: dict[str, str]) -> dict[str, str]:
    """A replica's environment with the cluster's job settings: huey on the shared Redis,
    periodic tasks on r0 only. Without Redis, job execution is off on every replica (each
    replica's own SQLite queues would not be shared, and periodic tasks would run N times)."""
    out = {k: v for k, v in env.items() if k != ENGINE_ENV}
    if not settings.server.job_execution:
        return out
    if not settings.cluster.redis.enabled:
        out["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        return out
    out[REDIS_URL_ENV] = redis_url(settings)
    out[PERIODIC_ENV] = "true" if plan.index == 0 else "false"
    return out


def render(settings: Settings, folder: Path) -> str:
    cfg = settings.cluster.redis
    return "\n".join(
        [
            "# written by mlflow-ops cluster.up; regenerated on every start",
            f"bind {cfg.host}",
            f"port {cfg.port}",
            "protected-mode yes",
            "daemonize no",
            'logfile ""',
            f"dir {folder}",
            'save ""',
            "appendonly no",
            f"maxmemory {cfg.maxmemory_mb}mb",
            "",
        ]
    )


def ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a Redis answers PING on host:port (the inline protocol: no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """The cluster's Redis: our own redis-server process group, config and log under the cluster dir."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg = settings.cluster.redis
        self.folder = cluster_dir(settings) / "redis"
        self.proc = ManagedProcess(
            "Redis",
            pid_file=self.folder / "redis.pid",
            log_file=self.folder / "redis.log",
            record=RedisRecord,
            grace=5.0,
        )

    @property
    def listener(self) -> Listener:
        return Listener(self.cfg.host, self.cfg.port, "cluster.redis.port")

    def running(self) -> RedisRecord | None:
        return self.proc.running()

    def start(self) -> str:
        """Start it unless ours already answers; a message."""
        record = self.running()
        if record and ping(record.host, record.port):
            return f"Redis already running on {record.host}:{record.port} (pid {record.pid}); reused"
        if record:
            self.proc.stop()
        binary = require_program("redis-server", "redis-server")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = self.folder / "redis.conf"
        config.write_text(render(self.settings, self.folder))
        config.chmod(0o600)
        record = self.proc.start(
            Launch(
                command=[binary, str(config)],
                env={},
                cwd=self.folder,
                ready=lambda: None if ping(self.cfg.host, self.cfg.port) else "PING gets no PONG",
                timeout=30,
                listeners=[self.listener],
                fields={"host": self.cfg.host, "port": self.cfg.port},
            )
        )
        return f"Redis on {self.cfg.host}:{self.cfg.port} (pid {record.pid}) for MLflow's job queues"

    def stop(self) -> str:
        return self.proc.stop(listeners=[self.listener])

    def status(self) -> dict[str, str]:
        record = self.running()
        if not record:
            return {}
        answers = "answers PING" if ping(record.host, record.port) else "does not answer PING"
        return {
            "redis": f"{redis_url(self.settings)} (pid {record.pid}), {answers}; huey job queues, periodic tasks on r0"
        }
