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
import time
from collections.abc import Iterator
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
    timings: dict[str, float] = field(default_factory=dict)
    built: dict[str, str] = field(default_factory=dict)

    def timed(self, what: str, func, *args):
        began = time.monotonic()
        result = func(*args)
        self.timings[what] = round(time.monotonic() - began, 1)
        return result


def _say(message: str) -> None:
    print(f"[engine] {message}", flush=True)


@pytest.fixture(scope="session")
def engine() -> Iterator[EngineSession]:
    state = make_state_dir()
    settings = make_settings(state, **{"engine.dir": str(ENGINE_DIR), "engine.adopt": False})
    already = daemon.ours_running(settings) is not None  # another session's: not ours to stop
    began = time.monotonic()
    info = daemon.start(settings, _say)
    client, _ = daemon.client(settings)
    session = EngineSession(
        settings,
        info,
        client,
        {"MLFLOW_OPS_ENGINE__DIR": str(ENGINE_DIR), "MLFLOW_OPS_ENGINE__ADOPT": "false"},
    )
    session.timings["engine start"] = round(time.monotonic() - began, 1)
    try:
        yield session
    finally:
        if not already:  # an engine another session started runs its containers: leave them
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.volumes.prune()
            client.networks.prune()
            daemon.stop(settings, _say)
        client.close()
        print(f"[engine] timings (s): {session.timings}", flush=True)
        shutil.rmtree(state, ignore_errors=True)


class Builds:
    """The images, built one after another in a background thread from the session's start, so
    that the tests needing only the first ones (the engine, the docker provider) run meanwhile.
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
def builds(engine: EngineSession, tmp_path_factory) -> Iterator[Builds]:
    started = Builds(engine, tmp_path_factory.mktemp("image"))
    try:
        yield started
    finally:
        started.close()


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
