"""What a cluster is made of, from the settings alone: replicas, their ports and folders, the LB.

State layout, all under <state_dir>/cluster: r<i>/{server.pid,server.log,prometheus/},
haproxy/{haproxy.cfg,haproxy.sock,haproxy.pid,haproxy.log}, pgbouncer.{pid,log}. PgBouncer's
files and the standby's data live beside the local PostgreSQL cluster, where its OS user can
reach them (see cluster.pgbouncer, cluster.standby).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import cluster_tls


@dataclass(frozen=True)
class ReplicaPlan:
    """Replica i: r<i>, listening on cluster.first_port + i, with a folder of its own."""

    index: int
    host: str
    port: int
    folder: Path

    @property
    def name(self) -> str:
        return f"r{self.index}"

    @property
    def url(self) -> str:
        return f"http://{_reachable(self.host)}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.folder / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    @property
    def metrics_dir(self) -> Path:
        return self.folder / "prometheus"


def cluster_dir(settings: Settings) -> Path:
    return settings.state_path / "cluster"


def replica_plans(settings: Settings, count: int | None = None) -> list[ReplicaPlan]:
    cfg = settings.cluster
    n = cfg.replicas if count is None else count
    return [ReplicaPlan(i, cfg.host, cfg.first_port + i, cluster_dir(settings) / f"r{i}") for i in range(n)]


def recorded_replicas(settings: Settings) -> list[ReplicaPlan]:
    """Every replica that left a pid file, whatever the current count (a cluster scaled down)."""
    cfg = settings.cluster
    found = []
    for pid_file in sorted(cluster_dir(settings).glob("r*/server.pid")):
        suffix = pid_file.parent.name[1:]
        if suffix.isdigit():
            i = int(suffix)
            found.append(ReplicaPlan(i, cfg.host, cfg.first_port + i, pid_file.parent))
    return found


def lb_url(settings: Settings) -> str:
    """The one public URL: HAProxy's frontend (https when it terminates TLS)."""
    lb = settings.cluster.lb
    return f"{'https' if cluster_tls(settings) else 'http'}://{_reachable(lb.host)}:{lb.port}"


def require_cluster_backend(settings: Settings) -> None:
    """A cluster needs PostgreSQL; a read replica needs our own (local) PostgreSQL."""
    if settings.backend != "postgres":
        raise UserError(
            "a cluster needs backend postgres: SQLite is one file on one machine, and its single "
            "writer would serialise every replica; use --backend postgres (and `inv db.start`)"
        )
    if settings.cluster.read_replica.enabled and settings.postgres.provider not in ("local", "auto"):
        raise UserError(
            f"cluster.read_replica needs postgres.provider local (a standby made with pg_basebackup "
            f"beside our own cluster), not {settings.postgres.provider}; turn it off or use the local provider"
        )


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host
