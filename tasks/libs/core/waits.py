"""Polling: the one way this tool waits for something to become true or ready."""

from __future__ import annotations

import time
from collections.abc import Callable

from tasks.libs.core.errors import UserError


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    """Poll condition until it holds (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_ready(probe: Callable[[], str | None], *, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll probe until it returns None (ready); it returns why not otherwise.

    A probe raises UserError to stop at once (the process died, the container is unhealthy,
    the password is refused): waiting longer would not help. On timeout the last reason is
    named: "<what> did not become ready within N s (<reason>)".
    """
    reason = "not tried"

    def ready() -> bool:
        nonlocal reason
        found = probe()
        reason = found or ""
        return found is None

    if not wait_until(ready, timeout=timeout, interval=interval):
        raise UserError(f"{what} did not become ready within {timeout:.0f} s ({reason})")
