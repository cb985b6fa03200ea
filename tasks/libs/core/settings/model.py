"""Settings: every section in one validated object, and the ports it would listen on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from tasks.libs.core.settings.artifacts import ArtifactsSettings
from tasks.libs.core.settings.base import PROJECT_ROOT, StrictModel
from tasks.libs.core.settings.cluster import ClusterSettings
from tasks.libs.core.settings.deploy import DeploySettings
from tasks.libs.core.settings.engine import EngineSettings
from tasks.libs.core.settings.lifecycle import LifecycleSettings
from tasks.libs.core.settings.monitoring import MonitoringSettings
from tasks.libs.core.settings.postgres import PostgresSettings
from tasks.libs.core.settings.security import SecuritySettings
from tasks.libs.core.settings.server import ServerSettings
from tasks.libs.core.settings.sqlite import SqliteSettings


class Settings(StrictModel):
    state_dir: str
    backend: Literal["sqlite", "postgres"]
    server: ServerSettings
    sqlite: SqliteSettings
    postgres: PostgresSettings
    artifacts: ArtifactsSettings
    security: SecuritySettings
    deploy: DeploySettings
    lifecycle: LifecycleSettings
    cluster: ClusterSettings
    monitoring: MonitoringSettings
    engine: EngineSettings

    @model_validator(mode="after")
    def _no_port_twice(self) -> Settings:
        seen: dict[int, str] = {}
        for key, port in ports_in_use(self):
            if port in seen:
                raise ValueError(f"{key} and {seen[port]} are both port {port}; give one of them another port")
            seen[port] = key
        return self

    @property
    def state_path(self) -> Path:
        path = Path(self.state_dir).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def sqlite_file(self) -> Path:
        return Path(self.sqlite.path) if self.sqlite.path else self.state_path / "mlflow.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_path / "artifacts"


def ports_in_use(settings: Settings) -> list[tuple[str, int]]:
    """(key, port) of every listener the settings would start: always the server and PostgreSQL,
    the rest when enabled (a cluster's ports count always: `cluster.up` may start any day)."""
    found = [("server.port", settings.server.port), ("postgres.port", settings.postgres.port)]
    artifacts = settings.artifacts
    if artifacts.store == "s3" and artifacts.s3.provider == "embedded":
        found.append(("artifacts.s3.port", artifacts.s3.port))
    if artifacts.store == "s3" and artifacts.mode == "split":
        found.append(("artifacts.artifacts_server.port", artifacts.artifacts_server.port))
    cluster = settings.cluster
    found += [("cluster.lb.port", cluster.lb.port), ("cluster.lb.stats_port", cluster.lb.stats_port)]
    found += [(f"cluster.first_port (+{i}: replica r{i})", cluster.first_port + i) for i in range(cluster.replicas)]
    if cluster.pgbouncer.enabled:
        found.append(("cluster.pgbouncer.port", cluster.pgbouncer.port))
    if cluster.read_replica.enabled:
        found.append(("cluster.read_replica.port", cluster.read_replica.port))
    if cluster.redis.enabled:
        found.append(("cluster.redis.port", cluster.redis.port))
    if settings.monitoring.postgres_exporter.enabled:
        found.append(("monitoring.postgres_exporter.port", settings.monitoring.postgres_exporter.port))
    return found
