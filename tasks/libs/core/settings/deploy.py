"""The `deploy` section: what only the exported Compose, Helm and systemd files use."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tasks.libs.core.settings.base import AbsolutePath, StrictModel


class DeployResources(StrictModel):
    requests: dict[str, str]
    limits: dict[str, str]

    @field_validator("requests", "limits")
    @classmethod
    def _known_resources(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - {"cpu", "memory"})
        if unknown:
            raise ValueError(f"only cpu and memory are exported, not {', '.join(unknown)}")
        return value


class DeployGcSettings(StrictModel):
    enabled: bool
    older_than: str = Field(pattern=r"^([0-9]+(\.[0-9]+)?[dhms])+$")
    on_calendar: str
    cron: str


class DeploySystemdSettings(StrictModel):
    user: str
    python: AbsolutePath | None  # systemd needs absolute paths
    config_dir: AbsolutePath


class DeployHelmSettings(StrictModel):
    persistence: bool | None
    strategy: Literal["RollingUpdate", "Recreate"] | None
    storage: str


class DeploySettings(StrictModel):
    name: str = Field(pattern=r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
    image: str
    base_image: str = Field(min_length=1)
    public_host: str | None
    replicas: int = Field(ge=1, le=100)
    max_connections: int | None = Field(ge=1)
    connection_reserve: int = Field(ge=0)
    auth_database: str = Field(min_length=1)
    resources: DeployResources
    gc: DeployGcSettings
    systemd: DeploySystemdSettings
    helm: DeployHelmSettings
