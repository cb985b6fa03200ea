"""The Compose project `deploy.compose` writes, up for real on the session's private engine.

Driven through the CLI as a user would: deploy.compose, deploy.up (which builds nothing here: the
session's images are cached), test.deployment --url and test.security --url, deploy.status,
deploy.down [--volumes]. PostgreSQL is the stand-in wherever no registry answers (here).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks.libs.core.processes import free_port
from tasks.libs.core.waits import wait_until
from tests.support.cli import hermetic_env, inv
from tests.support.clients import Clients
from tests.support.settings import make_state_dir

pytestmark = [pytest.mark.engine, pytest.mark.integration]


class Project:
    """A written and started Compose project of the session's engine."""

    def __init__(self, engine, backend: str, name: str):
        self.state = make_state_dir()
        self.port = free_port()
        self.name = name
        self.env = hermetic_env(
            self.state,
            backend=backend,
            server__port=str(self.port),
            deploy__name=name,
            server__workers="1",
            **{k.removeprefix("MLFLOW_OPS_").lower(): v for k, v in engine.env.items()},
        )
        # The project lives outside the state dir, as `--out D` puts it: test.security checks that
        # everything in the state dir is closed to other users, and an exported folder is not.
        (self.state / "hermetic.yaml").chmod(0o600)
        self.dir = Path(tempfile.mkdtemp(prefix="mlflow-ops-compose-")) / "project"
        self.engine = engine
        self.url = ""

    def cli(self, *args: str, timeout: float = 600):
        return inv(*args, env=self.env, timeout=timeout)

    def write(self) -> None:
        done = self.cli("deploy.compose", "--out", str(self.dir))
        assert done.returncode == 0, done.stderr

    def up(self) -> str:
        began = time.monotonic()
        done = self.cli("deploy.up", str(self.dir))
        self.engine.timings[f"deploy.up {self.name}"] = round(time.monotonic() - began, 1)
        assert done.returncode == 0, done.stdout + done.stderr
        url = f"http://127.0.0.1:{self.port}"
        assert f"MLflow serves at {url}" in done.stdout, done.stdout
        return url

    def containers(self, all_: bool = True):
        label = f"com.docker.compose.project={self.name}"
        return self.engine.client.containers.list(all=all_, filters={"label": label})

    def container(self, service: str):
        (found,) = [c for c in self.containers() if c.labels.get("com.docker.compose.service") == service]
        return found

    def volumes(self):
        return self.engine.client.volumes.list(filters={"label": f"com.docker.compose.project={self.name}"})

    def networks(self):
        return self.engine.client.networks.list(filters={"label": f"com.docker.compose.project={self.name}"})

    def cleanup(self) -> None:
        self.cli("deploy.down", str(self.dir), "--volumes")
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.rmtree(self.dir.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_project(engine, mlflow_image, postgres_standin):
    project = Project(engine, "postgres", "mlops-test-pg")
    project.write()
    project.url = project.up()
    yield project
    project.cleanup()


def _passes(done, what: str) -> None:
    assert done.returncode == 0, f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"


def test_postgres_project_serves_and_passes_the_deployment_and_security_checks(pg_project):
    assert (pg_project.dir / ".env").exists() is False  # the secrets travelled in Compose's environment
    _passes(pg_project.cli("test.deployment", "--url", pg_project.url, "--cleanup"), "test.deployment")
    _passes(pg_project.cli("test.security", "--url", pg_project.url), "test.security")
    status = pg_project.cli("deploy.status", str(pg_project.dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "mlflow: running, healthy" in status.stdout and "migrate: exited (0)" in status.stdout
    # the PostgreSQL container runs the stand-in and its password is in no process's argv
    postgres = pg_project.container("postgres")
    assert postgres.image.tags == ["mlflow-ops/postgres-debian:15"]


def test_mlflow_container_crashing_under_load_is_restarted_and_keeps_every_acknowledged_write(pg_project, tmp_path):
    """The restart policy (unless-stopped) brings a crashed server back. A crash is the container's
    main process dying: `docker kill` is a manual stop, after which Docker restarts nothing."""
    client = MlflowClient(pg_project.url)
    mlflow = pg_project.container("mlflow")
    clients = Clients(pg_project.url, tmp_path, 4)
    try:
        assert clients.wait_for(lambda log: len(log.ok) >= 10, timeout=240)
        mlflow.reload()
        restarts = mlflow.attrs["RestartCount"]
        import os
        import signal

        os.kill(mlflow.attrs["State"]["Pid"], signal.SIGKILL)  # the server process, as a crash would
        assert clients.wait_for(lambda log: len(log.failed) >= 1, timeout=120)

        def back() -> bool:
            mlflow.reload()
            return (
                mlflow.attrs["RestartCount"] > restarts
                and mlflow.attrs["State"].get("Health", {}).get("Status") == "healthy"
            )

        assert wait_until(back, timeout=240, interval=1), mlflow.attrs["State"]
        assert clients.wait_for(lambda log: len(log.ok) >= 20, timeout=240)
        logs = clients.stop()
    finally:
        clients.kill()
    assert all(log.run_id for log in logs)
    for log in logs:
        served = {m.step for m in client.get_metric_history(str(log.run_id), "m")}
        assert log.ok <= served, f"{log.name}: acknowledged but lost: {sorted(log.ok - served)[:20]}"
    assert sum(len(log.failed) for log in logs) >= 1

    # `docker kill` is a manual stop: the restart policy leaves the container down, deploy.up heals it
    mlflow.kill()
    time.sleep(3)  # long enough for a restart policy to have acted (its first delay is 100 ms)
    mlflow.reload()
    assert mlflow.status == "exited"
    assert pg_project.cli("deploy.status", str(pg_project.dir)).returncode == 3
    pg_project.up()


def test_a_project_whose_server_cannot_reach_its_database_fails_in_one_clear_line(pg_project):
    postgres = pg_project.container("postgres")
    postgres.stop(timeout=30)
    try:
        status = pg_project.cli("deploy.status", str(pg_project.dir))
        assert status.returncode == 1, status.stdout + status.stderr
        assert "postgres: exited" in status.stdout
        assert status.stderr.strip().splitlines() == ["service postgres is exited; `inv deploy.up` starts it again"]
        checks = pg_project.cli("test.deployment", "--url", pg_project.url, "--browser", "none")
        assert checks.returncode == 1 and "FAIL" in checks.stdout
        assert checks.stderr.strip().startswith("check(s) failed") or "check(s) failed" in checks.stderr
    finally:
        pg_project.up()  # deploy.up starts what is down


def test_down_then_up_keeps_every_run_and_down_volumes_removes_them(pg_project):
    client = MlflowClient(pg_project.url)
    experiment = client.create_experiment("kept-across-down-up")
    runs = {client.create_run(experiment).info.run_id for _ in range(3)}
    done = pg_project.cli("deploy.down", str(pg_project.dir))
    assert done.returncode == 0 and "volumes kept" in done.stdout, done.stdout + done.stderr
    assert pg_project.containers() == [] and pg_project.networks() == [] and pg_project.volumes()
    pg_project.up()
    assert {r.info.run_id for r in client.search_runs([experiment])} == runs

    done = pg_project.cli("deploy.down", str(pg_project.dir), "--volumes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert pg_project.containers() == [] and pg_project.networks() == [] and pg_project.volumes() == []


def test_sqlite_project_serves_passes_the_checks_and_leaves_nothing_after_down_volumes(engine, mlflow_image):
    project = Project(engine, "sqlite", "mlops-test-sqlite")
    try:
        project.write()
        url = project.up()
        # The web UI check runs against the PostgreSQL project (same image and server); not twice.
        _passes(project.cli("test.deployment", "--url", url, "--cleanup", "--browser", "none"), "test.deployment")
        _passes(project.cli("test.security", "--url", url), "test.security")
        done = project.cli("deploy.down", str(project.dir), "--volumes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert project.containers() == [] and project.networks() == [] and project.volumes() == []
    finally:
        project.cleanup()
