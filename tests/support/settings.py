"""Hermetic settings and servers for tests: a temporary state dir, free ports, the project's YAML."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import Settings, load_settings
from tasks.libs.core.state import STATE_DIR_MODE
from tasks.libs.server.control import start_server, stop_server

# Where tests keep private venvs that outlive a session (the bench's stock MLflow: a plain
# `pip install mlflow==<pin> psycopg2-binary`, about a minute to build, reused while whole).
STOCK_VENVS = os.environ.get("MLFLOW_OPS_TEST_VENVS", "/tmp/mlflow-ops-test-venvs")

# A password with every character that breaks naive URI building.
PG_PASSWORD = "p@ss:w#rd%/?&="


def make_state_dir() -> Path:
    # Not under pytest's tmp_path: that is mode 0700, closed to the OS user Postgres runs as.
    # The tool's own mode for a state dir: others may traverse it, not list it.
    path = Path(tempfile.mkdtemp(prefix="mlflow-ops-test-", dir="/tmp"))
    path.chmod(STATE_DIR_MODE)
    return path


def make_settings(state_dir: Path, **overrides) -> Settings:
    """Settings from the project's YAML, isolated from the user's env and config/local.yaml."""
    values = {
        "state_dir": str(state_dir),
        "server.port": free_port(),
        "postgres.port": free_port(),
        "postgres.provider": "local",
        "server.start_timeout": 180,
        "postgres.start_timeout": 120,
    }
    values.update(overrides)
    return load_settings(overrides=values, environ={}, local_file=False).settings


@dataclass
class LiveServer:
    settings: Settings
    url: str
    store_uri: str  # with the password: for tests only
    artifacts_dir: Path


@contextlib.contextmanager
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """A real server on settings, stopped (whole process group) when the block ends."""
    start_server(settings)
    try:
        yield LiveServer(
            settings, settings.server.url, backend_store_uri(settings, reveal=True), settings.artifacts_dir
        )
    finally:
        stop_server(settings)
