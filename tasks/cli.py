"""Shared plumbing for the thin task modules: load settings, turn user errors into Exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from invoke.exceptions import Exit

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Loaded, load_settings

PROFILE_HELP = "config profile to layer on (config/profiles/<name>.yaml); env MLFLOW_OPS_PROFILE"
CONFIG_HELP = "extra YAML config file layered over the profile; env MLFLOW_OPS_CONFIG"


def settings_from(profile: str | None, config: str | None, **flags: Any) -> Loaded:
    """Load settings with the task's flags as the top layer (None means 'not given')."""
    with user_errors():
        return load_settings(profile=profile, config_file=config, overrides=flags)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError (config errors included) into a one-line Exit(1); bugs keep their traceback."""
    try:
        yield
    except UserError as exc:
        raise Exit(f"error: {exc}", code=1) from None
