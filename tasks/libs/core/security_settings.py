"""The `security` section: limits of `inv test.security`'s probes."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from tasks.libs.core.strict import _Strict


class SecuritySettings(_Strict):
    request_timeout: float = Field(gt=0)
    probe_timeout: float = Field(gt=0)
    request_budget: int = Field(ge=10, le=500)
    known_fixed: str | None

    @field_validator("known_fixed")
    @classmethod
    def _absolute_file(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError(f"{value!r} is relative; give an absolute path or leave it null")
        return value
