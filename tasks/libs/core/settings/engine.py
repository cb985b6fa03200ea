"""The `engine` section: the Docker engine the tool starts or uses, and how it builds images."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from tasks.libs.core.settings.base import AbsolutePath, StrictModel


class EngineImagesSettings(StrictModel):
    # What stands in when an image cannot be pulled (no registry answers): `debian` builds it from a
    # Debian base made with mmdebstrap (the MLflow image's base, a PostgreSQL image keeping the
    # official image's contract); `none` fails in one line instead.
    fallback: Literal["debian", "none"]
    debian_suite: str = Field(pattern=r"^[a-z]+$")
    debian_mirror: str | None
    postgres_standin: str = Field(min_length=1)
    build_timeout: float = Field(gt=0)


class EngineSettings(StrictModel):
    dir: AbsolutePath | None
    adopt: bool
    network: str
    start_timeout: float = Field(gt=0)
    stop_timeout: float = Field(gt=0)
    up_timeout: float = Field(gt=0)
    images: EngineImagesSettings

    @field_validator("network")
    @classmethod
    def _private_range(cls, value: str) -> str:
        try:
            net = ipaddress.ip_network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a network such as 10.213.0.0/16") from None
        if net.version != 4 or not net.is_private or net.prefixlen > 20:
            raise ValueError(f"{value!r} must be a private IPv4 range of /20 or larger (each engine takes a /20)")
        return value
