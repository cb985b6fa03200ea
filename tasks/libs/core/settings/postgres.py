"""The `postgres` section: which provider runs PostgreSQL (docker, local, external) and how to reach it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from tasks.libs.core.settings.base import AbsolutePath, Port, StrictModel


class DockerSettings(StrictModel):
    image: str
    container: str
    volume: str


class LocalPostgresSettings(StrictModel):
    bin_dir: str | None
    os_user: str
    cluster_dir: AbsolutePath | None
    parameters: dict[str, str]


class PostgresSettings(StrictModel):
    provider: Literal["auto", "docker", "local", "external"]
    host: str
    port: int = Port
    database: str
    user: str
    password: SecretStr | None
    uri: SecretStr | None
    start_timeout: float = Field(gt=0)
    stop_timeout: float = Field(gt=0)
    docker: DockerSettings
    local: LocalPostgresSettings

    @field_validator("uri")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = value.get_secret_value().partition("://")[0]
            if scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
                raise ValueError(f"scheme {scheme!r} is not PostgreSQL; write postgresql://user:password@host:port/db")
        return value
