"""The `server` section: what `mlflow server` runs with, basic-auth sign-in and TLS."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from tasks.libs.core.settings.base import AbsolutePath, Port, StrictModel


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


class TlsSettings(StrictModel):
    """HTTPS: a certificate and key from config, or (both null) a private CA of the tool's own."""

    enabled: bool
    cert_file: AbsolutePath | None
    key_file: AbsolutePath | None
    ca_file: AbsolutePath | None  # what clients verify cert_file with; null: the system's trust store

    @model_validator(mode="after")
    def _files_together(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither (the tool then makes a private CA)")
        if self.ca_file is not None and self.cert_file is None:
            raise ValueError("ca_file goes with a cert_file of yours; with both null the tool's own CA is used")
        return self


def auto_workers() -> int:
    """One uvicorn worker per core of this machine (at most 8)."""
    return max(1, min(os.cpu_count() or 1, 8))


class ServerSettings(StrictModel):
    host: str
    port: int = Port
    workers: int = Field(ge=1, le=64)
    job_execution: bool
    job_engine: Literal["executor", "huey"]
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
    tls: TlsSettings

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{'https' if self.tls.enabled else 'http'}://{host}:{self.port}"
