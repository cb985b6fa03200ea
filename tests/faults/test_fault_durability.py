"""Fault injection (docs/faults.md cases 5-8): the tool or the store dies while clients write.

Every "acknowledged" metric is one whose log_metric call returned success in a client
process running with retries off; each must be in the store afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.processes import group_members
from tasks.libs.core.settings import load_settings
from tasks.libs.core.waits import wait_until
from tasks.libs.postgres.local import LocalPostgres
from tasks.libs.server.control import (
    ServerPaths,
    ServerRecord,
    health,
    start_server,
    stop_server,
    store_answers,
)
from tasks.libs.store.inspection import inspect_store
from tests.support.cli import gone, hermetic_env, inv, inv_popen
from tests.support.clients import Clients, lost_acknowledged
from tests.support.settings import make_settings

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _summary(logs) -> str:
    return "; ".join(
        f"{log.name}: ok={len(log.ok)} failed={len(log.failed)} setup_failed={log.setup_failed} "
        f"rc={log.proc.poll()} {(log.proc.stderr.read() if log.proc.poll() is not None else b'')[-300:]!r}"
        for log in logs
    )


def _table(text: str) -> dict[str, str]:
    """`inv server.status` output (a plain two-column table) as a dict."""
    return dict(line.split(None, 1) for line in text.strip().splitlines() if line.strip())


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    assert wait_until(lambda: not group_members(pgid), timeout=30)


# --- case 5 ----------------------------------------------------------------------------


def test_tool_sigkilled_during_start_then_status_and_start_see_the_truth(state_dir):
    env = hermetic_env(state_dir)
    settings = load_settings(environ=env).settings
    pid_file = ServerPaths.of(settings).pid_file
    tool = inv_popen("server.start", env=env)
    foreign = None
    record = None
    try:
        # The tool has started the server and is waiting for it: kill the tool, not the server.
        assert wait_until(lambda: pid_file.exists() or tool.poll() is not None, timeout=180)
        killed_while_waiting = tool.poll() is None
        tool.kill()
        tool.communicate()
        record = ServerRecord.read(pid_file)
        assert record is not None
        assert wait_until(lambda: health(settings.server.url) and store_answers(settings.server.url), timeout=300)

        status = inv("server.status", env=env)
        assert status.returncode == 0, status.stderr
        shown = _table(status.stdout)
        assert (shown["running"], shown["pid"], shown["healthy"]) == ("True", str(record.pid), "True")
        again = inv("server.start", env=env)
        assert again.returncode == 0 and f"pid {record.pid}); reused" in again.stdout, again.stdout + again.stderr

        # Now the server dies with no one to clean up: its pid file is stale.
        _kill_group(record.pgid)
        status = inv("server.status", env=env)
        assert status.returncode == 3 and _table(status.stdout) == {"running": "False"}
        assert not pid_file.exists()

        # Pid reuse: the pid file names a live process that is not ours.
        foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"], start_new_session=True)
        reused = dataclasses.replace(record, pid=foreign.pid, pgid=foreign.pid)
        reused.write(pid_file)
        status = inv("server.status", env=env)
        assert status.returncode == 3 and foreign.poll() is None and not pid_file.exists()
        reused.write(pid_file)
        fresh = inv("server.start", env=env)
        assert fresh.returncode == 0 and "server ready" in fresh.stdout, fresh.stdout + fresh.stderr
        new_record = ServerRecord.read(pid_file)
        assert new_record is not None
        assert new_record.pid != foreign.pid and foreign.poll() is None
        stopped = inv("server.stop", env=env)
        assert stopped.returncode == 0 and f"stopped the server (pid {new_record.pid}" in stopped.stdout
        assert foreign.poll() is None, "a process that was not ours was killed"
        print(f"tool killed {'while waiting for readiness' if killed_while_waiting else 'after it returned'}")
    finally:
        if tool.poll() is None:
            tool.kill()
        stop_server(settings)
        if record is not None:
            _kill_group(record.pgid)
        if foreign is not None:
            foreign.kill()
            foreign.wait()


# --- case 6 ----------------------------------------------------------------------------


def test_server_sigkilled_under_four_clients_loses_no_acknowledged_metric(state_dir):
    settings = make_settings(state_dir, backend="sqlite")
    first = start_server(settings)
    clients = Clients(settings.server.url, state_dir, 4)
    try:
        assert clients.wait_for(lambda log: len(log.ok) >= 10, timeout=240), _summary(clients.refresh())
        _kill_group(first.record.pgid)
        assert clients.wait_for(lambda log: len(log.failed) >= 1, timeout=120), _summary(clients.refresh())
        logs = clients.stop()
        assert all(log.proc.returncode == 0 and log.run_id for log in logs), _summary(logs)

        again = start_server(settings)  # the pid file left by the killed server is stale
        assert not again.reused and again.record.pid != first.record.pid
        client = MlflowClient(settings.server.url)
        for log in logs:
            served = {m.step for m in client.get_metric_history(str(log.run_id), "m")}
            assert log.ok <= served, f"{log.name}: acknowledged but lost: {sorted(log.ok - served)[:20]}"
        assert lost_acknowledged(logs, settings) == {}

        report = inspect_store(
            backend_store_uri(settings, reveal=True), settings.artifacts_dir, sections=("runs",), stale_hours=0
        )
        left_running = {run["run_id"] for run in report["runs"]["stale_running"]}
        assert {log.run_id for log in logs} <= left_running
    finally:
        clients.kill()
        stop_server(settings)


# --- case 7 ----------------------------------------------------------------------------


def test_postgres_stopped_in_immediate_mode_mid_workload_is_recovered_with_every_commit(state_dir):
    settings = make_settings(state_dir, backend="postgres")
    db = LocalPostgres(settings)
    db.start()
    clients = None
    try:
        start_server(settings)
        clients = Clients(settings.server.url, state_dir, 4)
        assert clients.wait_for(lambda log: len(log.ok) >= 10, timeout=240), _summary(clients.refresh())
        postmaster = db.postmaster_pid()
        assert postmaster is not None
        crash = db._run([str(db._binaries() / "pg_ctl"), "stop", "-D", str(db.data_dir), "-m", "immediate", "-w"])
        assert crash.returncode == 0, crash.stderr
        assert wait_until(lambda: gone(postmaster), timeout=30) and not db.is_running()
        assert clients.wait_for(lambda log: len(log.failed) >= 1, timeout=120), _summary(clients.refresh())
        last_failed = {log.name: max(log.failed) for log in clients.refresh()}

        assert "PostgreSQL started" in db.start()
        # The server keeps running and recovers: each client gets successes after its failures.
        assert clients.wait_for(lambda log: max(log.ok, default=-1) > last_failed[log.name], timeout=180), _summary(
            clients.refresh()
        )
        logs = clients.stop()
        assert lost_acknowledged(logs, settings) == {}
    finally:
        if clients is not None:
            clients.kill()
        stop_server(settings)
        db.stop()


# --- case 8 ----------------------------------------------------------------------------


def test_eight_concurrent_sqlite_writers_lose_nothing_and_hide_no_failure(state_dir, record_property):
    settings = make_settings(state_dir, backend="sqlite")
    result = start_server(settings)
    steps = 40
    clients = Clients(settings.server.url, state_dir, 8, max_steps=steps)
    try:
        assert len(group_members(result.record.pgid)) >= settings.server.workers + 1
        logs = clients.join(timeout=400)
        assert all(log.proc.returncode == 0 and log.run_id for log in logs), _summary(logs)
        for log in logs:
            # Every call the client made ended in a success or an exception it saw: none vanished.
            assert log.attempted == set(range(steps)), f"{log.name}: unreported calls"
            assert not log.ok & set(log.failed)
        assert lost_acknowledged(logs, settings) == {}
        record_property("acknowledged", sum(len(log.ok) for log in logs))
        record_property("failed", sum(len(log.failed) for log in logs))
        print(
            f"8 writers: {sum(len(log.ok) for log in logs)} acknowledged, "
            f"{sum(len(log.failed) for log in logs)} failed (each raised in its client)"
        )
    finally:
        clients.kill()
        stop_server(settings)
