"""The `security` section: limits of `inv test.security`'s probes."""

from __future__ import annotations

from pydantic import Field

from tasks.libs.core.settings.base import AbsolutePath, StrictModel


class SecuritySettings(StrictModel):
    request_timeout: float = Field(gt=0)
    probe_timeout: float = Field(gt=0)
    request_budget: int = Field(ge=10, le=500)
    known_fixed: AbsolutePath | None
