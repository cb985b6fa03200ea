"""Helpers for the deployment check tests."""

from __future__ import annotations

from tasks.libs.core.processes import free_port


def by_name(report):
    return {c.name: c for c in report.checks}


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: the port was free a moment ago
