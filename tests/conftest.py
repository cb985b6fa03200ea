"""Shared fixtures: hermetic settings (temp state dir, free ports), a real PostgreSQL, real servers.

Nothing here touches a user's server on 3110/3111: every fixture picks free ports and a
temporary state directory.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks import postgres
from tasks.mlflow_server import start_server, stop_server
from tasks.processes import free_port
from tasks.credentials import backend_store_uri
from tasks.settings import Settings, load_settings

# A password with every character that breaks naive URI building.
PG_PASSWORD = "p@ss:w#rd%/?&="


def make_state_dir() -> Path:
    # Not under pytest's tmp_path: that is mode 0700, closed to the OS user Postgres runs as.
    path = Path(tempfile.mkdtemp(prefix="mlflow-ops-test-", dir="/tmp"))
    path.chmod(0o755)
    return path


def make_settings(state_dir: Path, **overrides) -> Settings:
    """Settings from the project's YAML, isolated from the user's env and config/local.yaml."""
    values = {"state_dir": str(state_dir), "server.port": free_port(), "postgres.port": free_port(),
              "postgres.provider": "local", "server.start_timeout": 180, "postgres.start_timeout": 120}
    values.update(overrides)
    return load_settings(overrides=values, environ={}, local_file=False).settings


@dataclass
class LiveServer:
    settings: Settings
    url: str
    store_uri: str          # with the password: for tests only
    artifacts_dir: Path


@pytest.fixture
def state_dir():
    path = make_state_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_settings():
    """A real local PostgreSQL for the whole session (its own cluster, port and password)."""
    path = make_state_dir()
    settings = make_settings(path, backend="postgres", **{"postgres.password": PG_PASSWORD})
    db = postgres.provider_for(settings)
    db.start()
    yield settings
    db.stop()
    shutil.rmtree(path, ignore_errors=True)


def _live_server(settings: Settings):
    start_server(settings)
    try:
        yield LiveServer(settings, settings.server.url, backend_store_uri(settings, reveal=True),
                         settings.artifacts_dir)
    finally:
        stop_server(settings)


@pytest.fixture(scope="session")
def sqlite_server():
    path = make_state_dir()
    yield from _live_server(make_settings(path, backend="sqlite"))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(pg_settings):
    """A server on the session's PostgreSQL, with a state dir of its own."""
    path = make_state_dir()
    settings = pg_settings.model_copy(deep=True, update={"state_dir": str(path)})
    settings.server.port = free_port()
    yield from _live_server(settings)
    shutil.rmtree(path, ignore_errors=True)
