"""A real `mlflow server` on both backends: start, log, stop, start again, the run is still there."""

import json
import os
import subprocess
import sys

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import port_is_free
from tasks.libs.core.waits import wait_until
from tasks.libs.server.control import (
    ServerPaths,
    ServerRecord,
    running_record,
    server_status,
    start_server,
    stop_server,
)
from tests.support.settings import PG_PASSWORD, make_settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def server_settings(request, state_dir):
    if request.param == "sqlite":
        return make_settings(state_dir, backend="sqlite")
    pg = request.getfixturevalue("pg_settings")
    return make_settings(
        state_dir, backend="postgres", **{"postgres.port": pg.postgres.port, "postgres.password": PG_PASSWORD}
    )


def test_run_survives_a_restart(server_settings):
    settings = server_settings
    result = start_server(settings)
    try:
        record = result.record
        assert not result.reused and result.backend == settings.backend
        cmdline = " ".join(psutil.Process(record.pid).cmdline())
        assert "--backend-store-uri" not in cmdline and PG_PASSWORD not in cmdline
        client = MlflowClient(settings.server.url)
        exp = client.create_experiment(f"lifecycle-{settings.backend}")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "loss", 0.25)
        client.set_terminated(run.info.run_id)
        group = [p.pid for p in psutil.process_iter() if os.getpgid(p.pid) == record.pgid]
        assert len(group) >= 2  # the server and its uvicorn workers
    finally:
        assert "stopped the server" in stop_server(settings)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in group)
    assert port_is_free(settings.server.host, settings.server.port)
    assert not ServerPaths.of(settings).pid_file.exists()

    start_server(settings)
    try:
        again = MlflowClient(settings.server.url).get_run(run.info.run_id)
        assert again.data.metrics == {"loss": 0.25}
        assert server_status(settings)["healthy"] is True
    finally:
        stop_server(settings)


def test_sqlite_file_is_put_in_wal_mode(sqlite_server):
    import sqlite3

    with sqlite3.connect(sqlite_server.settings.sqlite_file) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_busy_port_is_reported_and_nothing_adopted(state_dir):
    settings = make_settings(state_dir)
    holder = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(settings.server.port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: not port_is_free("127.0.0.1", settings.server.port), timeout=10)
        with pytest.raises(UserError, match=rf"in use by pid {holder.pid} .*http.server"):
            start_server(settings)
        assert holder.poll() is None and running_record(settings) is None
    finally:
        holder.terminate()
        holder.wait()


def test_server_dying_at_start_is_reported_at_once_with_its_log(state_dir):
    settings = make_settings(state_dir, **{"server.uvicorn_opts": "--no-such-uvicorn-flag"})
    with pytest.raises(UserError, match=r"exited during start-up\n--- last lines of .*server.log ---") as err:
        start_server(settings)
    assert "no-such-uvicorn-flag" in str(err.value)
    assert not ServerPaths.of(settings).pid_file.exists()


def test_postgres_down_fails_clearly_or_falls_back_loudly(state_dir):
    settings = make_settings(state_dir, backend="postgres", **{"postgres.password": "x"})
    with pytest.raises(
        UserError, match=r"PostgreSQL is not usable \(nothing answers at .*\); run `inv db.start` first"
    ):
        start_server(settings)
    settings.server.fallback_to_sqlite = True
    result = start_server(settings)
    try:
        assert result.backend == "sqlite"
        assert any("FALLING BACK TO SQLITE" in w for w in result.warnings)
    finally:
        stop_server(settings)


def test_stale_pid_file_is_detected_and_cleared(state_dir):
    settings = make_settings(state_dir)
    pid_file = ServerPaths.of(settings).pid_file
    # A pid that exists but is not ours (our own test process, with another start time).
    ServerRecord(
        pid=os.getpid(),
        pgid=os.getpgid(0),
        create_time=1.0,
        started_at=0.0,
        backend="sqlite",
        host="127.0.0.1",
        port=1,
        url="http://127.0.0.1:1",
        store="sqlite:///x",
        log="x",
    ).write(pid_file)
    assert server_status(settings) == {"running": False}
    assert not pid_file.exists()
    pid_file.write_text(json.dumps({"garbage": True}))
    assert "not running" in stop_server(settings)
