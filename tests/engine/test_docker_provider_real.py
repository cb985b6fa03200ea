"""The docker provider of `db.*` against the session's real engine (the fake client stays only for
errors an engine cannot be made to give: tests/unit/test_docker_provider.py)."""

from __future__ import annotations

import shutil

import pytest
from docker.errors import NotFound

from tasks.libs.core.settings import load_settings
from tasks.libs.postgres.connection import pg_connection
from tests.support.cli import hermetic_env, inv
from tests.support.settings import make_state_dir

pytestmark = [pytest.mark.engine, pytest.mark.integration]


def test_db_start_status_stop_reset_wipe_with_the_real_engine(engine, postgres_standin):
    state = make_state_dir()
    name = "mlflow-ops-postgres-engine-test"
    env = hermetic_env(
        state,
        postgres__provider="docker",
        postgres__docker__container=name,
        postgres__docker__volume=f"{name}-data",
        postgres__password="s3cr3t-p@ss:w#rd",
        **{k.removeprefix("MLFLOW_OPS_").lower(): v for k, v in engine.env.items()},
    )
    settings = load_settings(environ=env, local_file=False).settings
    try:
        done = inv("db.start", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"PostgreSQL container {name} created and started" in done.stdout
        assert "using the stand-in mlflow-ops/postgres-debian:15" in done.stdout  # no registry answers here
        assert "s3cr3t" not in done.stdout + done.stderr

        status = inv("db.status", env=env)
        assert status.returncode == 0 and "healthy" in status.stdout, status.stdout + status.stderr
        container = engine.client.containers.get(name)
        assert container.labels["io.mlflow-ops.role"] == "postgres"
        assert container.attrs["HostConfig"]["PortBindings"]["5432/tcp"][0]["HostIp"] == "127.0.0.1"
        assert all("s3cr3t" not in arg for arg in container.attrs["Args"] + container.attrs["Config"]["Cmd"])

        # the password from the settings, over TCP through the published port
        with pg_connection(settings) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")

        done = inv("db.stop", env=env)
        assert done.returncode == 0 and "data kept" in done.stdout, done.stdout + done.stderr
        assert inv("db.status", env=env).returncode == 3

        done = inv("db.start", env=env)
        assert done.returncode == 0 and "started (existing container)" in done.stdout, done.stdout + done.stderr
        with pg_connection(settings) as conn, conn.cursor() as cur:
            cur.execute("SELECT v FROM kept")
            assert cur.fetchall() == [(42,)]

        done = inv("db.reset", "--yes", "--wipe", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        with pytest.raises(NotFound):
            engine.client.containers.get(name)
        with pytest.raises(NotFound):
            engine.client.volumes.get(f"{name}-data")
    finally:
        inv("db.reset", "--yes", "--wipe", env=env)
        shutil.rmtree(state, ignore_errors=True)
