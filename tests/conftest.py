"""Fixtures only (helpers live in tests/support/): hermetic state dirs, a real PostgreSQL, real servers.

The folder says what a test is: tests/unit start no process; tests/integration start real
PostgreSQL clusters and `mlflow server`s; tests/faults inject faults into them or drive the
CLI as a user does. The marks `integration` and `faults` follow the folder, so that
`pytest -m faults` and `pytest -m "not integration"` select the same tests as the folders.
Nothing here touches a user's server on 3110/3111: every fixture picks free ports and a
temporary state directory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tasks.libs.core.processes import free_port
from tasks.libs.lifecycle.internals.runtime import ensure_venv
from tasks.libs.postgres.providers import provider_for
from tests.support.settings import (
    PG_PASSWORD,
    live_server,
    make_settings,
    make_state_dir,
)

FOLDER_MARKS = {
    "integration": ("integration",),
    "faults": ("integration", "faults"),
    "engine": ("integration", "engine"),
}


def pytest_collection_modifyitems(items):
    for item in items:
        folder = Path(str(item.path)).parent.name
        for mark in FOLDER_MARKS.get(folder, ()):
            item.add_marker(mark)


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
    db = provider_for(settings)
    db.start()
    yield settings
    db.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sqlite_server():
    path = make_state_dir()
    with live_server(make_settings(path, backend="sqlite")) as server:
        yield server
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(pg_settings):
    """A server on the session's PostgreSQL, with a state dir of its own."""
    path = make_state_dir()
    settings = pg_settings.model_copy(deep=True, update={"state_dir": str(path)})
    settings.server.port = free_port()
    with live_server(settings) as server:
        yield server
    shutil.rmtree(path, ignore_errors=True)


OLD_MLFLOW = "2.22.5"  # the last 2.x release: a real older store, 39 migrations behind 3.17.2


@pytest.fixture(scope="session")
def old_mlflow():
    """(venvs folder, python) of MLflow 2.22.5 in a private venv, built once per session by the tool's
    own `db.upgrade --to` code (about a minute; tests that need it are marked old_mlflow), and
    removed when the session ends."""
    venvs = Path(tempfile.mkdtemp(prefix="mlflow-ops-venvs-", dir="/tmp"))
    settings = make_settings(venvs, **{"lifecycle.venvs_dir": str(venvs)})
    try:
        yield venvs, ensure_venv(settings, OLD_MLFLOW, say=lambda _: None)
    finally:
        shutil.rmtree(venvs, ignore_errors=True)
