"""The `monitoring` section: Prometheus files, alert thresholds, postgres_exporter."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from tasks.libs.core.settings.base import Port, StrictModel

_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


class PostgresExporterSettings(StrictModel):
    enabled: bool
    port: int = Port


class ThresholdSettings(StrictModel):
    error_ratio: float = Field(gt=0, lt=1)
    p95_seconds: float = Field(gt=0)
    connections_ratio: float = Field(gt=0, le=1)
    replica_lag_bytes: int = Field(ge=0)


class MonitoringSettings(StrictModel):
    scrape_interval: str
    down_for: str
    thresholds: ThresholdSettings
    postgres_exporter: PostgresExporterSettings

    @field_validator("scrape_interval", "down_for")
    @classmethod
    def _prometheus_duration(cls, value: str) -> str:
        if not _DURATION.fullmatch(value):
            raise ValueError(f"{value!r} is not a Prometheus duration (e.g. 15s, 1m, 1h30m)")
        return value
