"""Fixtures of the engine tests: ONE private Docker engine per session, and the images it builds.

The engine is ours (tasks/libs/engine/daemon.py with engine.adopt false): never the machine's
/var/run/docker.sock. Its folder is a cache of this machine, not of the checkout
(~/.cache/mlflow-ops/test-engine, or MLFLOW_OPS_TEST_ENGINE_DIR), so that the Debian base tarball,
the wheelhouse and the built images serve the next run, in this clone or a fresh one. At the end
of the session every container, network and volume it ran is removed and the engine is stopped;
the images stay (they are the cache, keyed by content).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from tasks.libs.core.settings import Settings
from tasks.libs.deploy import image_build
from tasks.libs.deploy.writer import export
from tasks.libs.engine import daemon, images
from tests.support.settings import make_settings, make_state_dir
from tests.support.systemd_box import systemd_image

ENGINE_DIR = Path(os.environ.get("MLFLOW_OPS_TEST_ENGINE_DIR", "~/.cache/mlflow-ops/test-engine")).expanduser()
MLFLOW_IMAGE = "mlflow-ops/mlflow:3.17.2"
# Run order: the cheapest images first, so that a broken build fails early.
ORDER = ("test_engine_cli.py", "test_docker_provider_real.py", "test_compose_real.py", "test_systemd_real.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = Path(str(item.path)).name
        return ORDER.index(name) if name in ORDER else len(ORDER)

    items.sort(key=lambda item: rank(item) if Path(str(item.path)).parent.name == "engine" else -1)


@dataclass
class EngineSession:
    settings: Settings  # engine.dir = the cache, engine.adopt false
    info: daemon.EngineInfo
    client: docker.DockerClient
    env: dict[str, str]  # MLFLOW_OPS_* for CLI runs that must use this engine
    state: Path = Path()  # the session's own state dir (its settings live there)
    ours: bool = True  # we started the engine (else another session's: never stopped here)
    timings: dict[str, float] = field(default_factory=dict)
    built: dict[str, str] = field(default_factory=dict)

    def timed(self, what: str, func, *args):
        began = time.monotonic()
        result = func(*args)
        self.timings[what] = round(time.monotonic() - began, 1)
        return result


def _say(message: str) -> None:
    print(f"[engine] {message}", flush=True)


def start_engine() -> EngineSession:
    state = make_state_dir()
    settings = make_settings(state, **{"engine.dir": str(ENGINE_DIR), "engine.adopt": False})
    began = time.monotonic()
    already = daemon.ours_running(settings) is not None  # another session's: not ours to stop
    info = daemon.start(settings, _say)
    client, _ = daemon.client(settings)
    session = EngineSession(
        settings,
        info,
        client,
        {"MLFLOW_OPS_ENGINE__DIR": str(ENGINE_DIR), "MLFLOW_OPS_ENGINE__ADOPT": "false"},
        state=state,
        ours=not already,
    )
    session.timings["engine start"] = round(time.monotonic() - began, 1)
    return session


def stop_engine(session: EngineSession) -> None:
    try:
        if session.ours:  # an engine another session started runs its containers: leave them
            for container in session.client.containers.list(all=True):
                container.remove(force=True)
            session.client.volumes.prune()
            session.client.networks.prune()
            daemon.stop(session.settings, _say)
    finally:
        session.client.close()
        print(f"[engine] timings (s): {session.timings}", flush=True)
        shutil.rmtree(session.state, ignore_errors=True)


EARLY = pytest.StashKey["tuple[EngineSession, Builds]"]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """When the run includes engine tests, start the engine and the image builds now: the engine
    tests run last, so the builds (minutes on a fresh machine) overlap every other test."""
    if any(Path(str(item.path)).parent.name == "engine" for item in session.items):
        early = start_engine()
        session.config.stash[EARLY] = (early, Builds(early, Path(tempfile.mkdtemp(prefix="mlflow-ops-image-"))))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Whatever the run, the engine and the build thread started here are stopped here."""
    early = session.config.stash.get(EARLY, None)
    if early is not None:
        engine, builds = early
        try:
            builds.close()
        finally:
            stop_engine(engine)
            shutil.rmtree(builds.image_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> EngineSession:
    early = request.config.stash.get(EARLY, None)
    assert early is not None, "the engine starts when the run is collected (pytest_collection_finish)"
    return early[0]


class Builds:
    """The images, built one after another in a background thread from the session's start, so
    that every other test (and the engine tests needing only the first images) runs meanwhile.
    Order: the Debian base, the PostgreSQL stand-in, the MLflow image, the systemd host."""

    def __init__(self, engine: EngineSession, image_dir: Path):
        self.engine = engine
        self.image_dir = image_dir
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-builds")
        client, _ = daemon.client(engine.settings)  # a client of the thread's own
        self.client = client
        self.base = self.pool.submit(self._timed, "debian base", images.debian_base, engine.settings, client, _say)
        self.standin = self.pool.submit(
            self._timed, "postgres stand-in", images.postgres_standin, engine.settings, client, _say
        )
        self.mlflow = self.pool.submit(self._mlflow)
        self.systemd = self.pool.submit(
            self._timed, "systemd image", systemd_image, engine.settings, client, MLFLOW_IMAGE, _say
        )

    def _timed(self, what: str, func, *args):
        return self.engine.timed(what, func, *args)

    def _mlflow(self) -> str:
        export(self.engine.settings, "compose", profile="test", out=self.image_dir, write_secrets=False)
        settings, client = self.engine.settings, self.client
        self._timed("mlflow image", image_build.mlflow_image, settings, self.image_dir, MLFLOW_IMAGE, client, _say)
        return MLFLOW_IMAGE

    def close(self) -> None:
        for future in (self.base, self.standin, self.mlflow, self.systemd):
            future.cancel()
        self.pool.shutdown(wait=True)
        self.client.close()


@pytest.fixture(scope="session")
def builds(request: pytest.FixtureRequest) -> Builds:
    return request.config.stash[EARLY][1]


@pytest.fixture(scope="session")
def debian_base(builds: Builds) -> str:
    return builds.base.result()


@pytest.fixture(scope="session")
def postgres_standin(builds: Builds) -> str:
    return builds.standin.result()


@pytest.fixture(scope="session")
def mlflow_image(builds: Builds) -> str:
    """The MLflow image from the Dockerfile deploy.compose writes (FROM the Debian base where no
    registry answers) and the wheelhouse."""
    return builds.mlflow.result()


@pytest.fixture(scope="session")
def systemd_box_image(builds: Builds) -> str:
    return builds.systemd.result()
