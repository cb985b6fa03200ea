"""The `sqlite` section: where the SQLite store lives and whether it runs in WAL mode."""

from __future__ import annotations

from pydantic import field_validator

from tasks.libs.core.settings.base import AbsolutePath, StrictModel


class SqliteSettings(StrictModel):
    path: AbsolutePath | None
    wal: bool

    @field_validator("path", mode="before")
    @classmethod
    def _a_file(cls, value: object) -> object:
        if isinstance(value, str) and (value.startswith("sqlite:") or value.strip() == ":memory:"):
            raise ValueError("give a file path, not a URI; an in-memory database loses every run")
        return value
