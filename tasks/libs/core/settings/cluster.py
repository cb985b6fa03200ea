"""The `cluster` section: replicas, HAProxy, PgBouncer, the standby (keys documented in config/defaults.yaml)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from tasks.libs.core.settings.base import Port, StrictModel


class LoadBalancerSettings(StrictModel):
    host: str
    port: int = Port
    stats_port: int = Port
    check_interval_ms: int = Field(ge=100, le=60_000)
    fall: int = Field(ge=1, le=10)
    rise: int = Field(ge=1, le=10)
    retries: int = Field(ge=0, le=10)
    retry_on: str
    timeout_server_s: int = Field(ge=1)

    @field_validator("retry_on")
    @classmethod
    def _known_retry_events(cls, value: str) -> str:
        known = {"conn-failure", "empty-response", "junk-response", "response-timeout", "0rtt-rejected", "none"}
        unknown = [word for word in value.split() if word not in known and not re.fullmatch(r"\d{3}", word)]
        if unknown or not value.split():
            raise ValueError(f"unknown HAProxy retry-on event(s) {unknown}; e.g. conn-failure")
        return value


class PgBouncerSettings(StrictModel):
    enabled: bool
    host: str
    port: int = Port
    pool_size: int | None = Field(ge=1)
    max_client_conn: int | None = Field(ge=1)


class ReadReplicaSettings(StrictModel):
    enabled: bool
    port: int = Port
    name: str
    replication_user: str
    synchronous: bool

    @field_validator("name", "replication_user")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError("use lower-case letters, digits and _ only (a PostgreSQL name)")
        return value


class ClusterSettings(StrictModel):
    replicas: int = Field(ge=1, le=16)
    host: str
    first_port: int = Port
    workers: int | None = Field(ge=1, le=64)
    start_timeout: float = Field(gt=0)
    lb: LoadBalancerSettings
    pgbouncer: PgBouncerSettings
    read_replica: ReadReplicaSettings
    tls: bool | None  # HAProxy terminates TLS with server.tls's certificate; null: as server.tls.enabled

    @model_validator(mode="after")
    def _ports_fit(self) -> ClusterSettings:
        if self.first_port + self.replicas - 1 > 65535:
            raise ValueError(f"cluster.first_port {self.first_port} + {self.replicas} replicas runs past port 65535")
        return self
