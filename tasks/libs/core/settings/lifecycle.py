"""The `lifecycle` section: backups, upgrades, migrate and gc of the store."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from tasks.libs.core.durations import parse_duration
from tasks.libs.core.settings.base import AbsolutePath, StrictModel


class LifecycleSettings(StrictModel):
    backups_dir: AbsolutePath | None
    keep_backups: int | None = Field(ge=1)
    max_backup_age: str
    rehearsal_database: str | None
    server_checks: bool
    venvs_dir: AbsolutePath | None
    migrate_batch_rows: int = Field(ge=100, le=1_000_000)
    verify_runs: int = Field(ge=1)
    gc_older_than: str

    @field_validator("max_backup_age", "gc_older_than")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # raises ValueError with the one-line reason
        return value

    @field_validator("rehearsal_database")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
            raise ValueError("use letters, digits and _ only (a PostgreSQL database name, at most 63 characters)")
        return value
