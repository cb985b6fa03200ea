"""The `server` section: what `mlflow server` runs with, and basic-auth sign-in."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from tasks.libs.core.settings.base import Port, StrictModel


class AuthSettings(StrictModel):
    enabled: bool
    admin_user: str
    admin_password: SecretStr | None
    default_permission: Literal["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"]
    grant_default_workspace_access: bool

    @field_validator("admin_password")
    @classmethod
    def _not_the_old_default(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() in ("password1234", ""):
            raise ValueError("this is MLflow's old default admin password; choose another or leave it null")
        return value


def auto_workers() -> int:
    """One uvicorn worker per core of this machine (at most 8)."""
    return max(1, min(os.cpu_count() or 1, 8))


class ServerSettings(StrictModel):
    host: str
    port: int = Port
    workers: int = Field(ge=1, le=64)
    job_execution: bool
    allowed_hosts: list[str] | None

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: object) -> object:
        return auto_workers() if value == "auto" else value

    start_timeout: float = Field(gt=0)
    stop_grace: float = Field(ge=0)
    fallback_to_sqlite: bool
    uvicorn_opts: str
    env: dict[str, str]
    metrics: bool
    workspaces: bool
    auth: AuthSettings

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"
