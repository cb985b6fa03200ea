"""Fault injection on a cluster driven through the CLI: one replica's whole process group SIGKILLed
while 8 client processes log through HAProxy (docs/faults.md case 13)."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from tasks.libs.cluster.haproxy import Haproxy
from tasks.libs.cluster.plan import lb_url, replica_plans
from tasks.libs.core.processes import free_port, free_ports_in_a_row, group_members, port_is_free
from tasks.libs.core.settings import load_settings
from tasks.libs.core.waits import wait_until
from tasks.libs.postgres.connection import ensure_database
from tasks.libs.server.control import ServerRecord
from tests.support.cli import hermetic_env, inv, pid_files, processes_in
from tests.support.clients import Clients, lost_acknowledged
from tests.support.settings import PG_PASSWORD, make_state_dir

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _summary(logs) -> str:
    return "; ".join(f"{log.name}: ok={len(log.ok)} failed={len(log.failed)} rc={log.proc.poll()}" for log in logs)


def _env(pg_settings, state):
    return hermetic_env(
        state,
        postgres__port=str(pg_settings.postgres.port),
        postgres__password=PG_PASSWORD,
        postgres__database="mlflow_cluster_fault",
        cluster__first_port=str(free_ports_in_a_row(2)),
        cluster__lb__port=str(free_port()),
        cluster__lb__stats_port=str(free_port()),
        backend="postgres",
    )


@pytest.fixture
def cluster_env(pg_settings):
    """A hermetic CLI environment for a cluster on the session's PostgreSQL; down (and wiped) after."""
    state = make_state_dir()
    env = _env(pg_settings, state)
    settings = load_settings(environ=env).settings
    ensure_database(settings)
    yield env, settings
    inv("cluster.down", "--wipe", env=env)  # whatever a failed test left
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def sqlite_env():
    state = make_state_dir()
    env = hermetic_env(state, backend="sqlite")
    yield env, load_settings(environ=env).settings
    shutil.rmtree(state, ignore_errors=True)


def test_replica_sigkilled_under_eight_clients_is_taken_out_and_restored(cluster_env, record_property):
    env, settings = cluster_env
    up = inv("cluster.up", "--replicas", "2", env=env, timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    r0, r1 = replica_plans(settings)
    lb = Haproxy(settings)
    clients = Clients(lb_url(settings), settings.state_path, 8)
    try:
        assert clients.wait_for(lambda log: len(log.ok) >= 10, timeout=300), _summary(clients.refresh())
        victim = ServerRecord.read(r1.pid_file)
        assert victim is not None
        killed_at = time.monotonic()
        os.killpg(victim.pgid, signal.SIGKILL)
        assert wait_until(lambda: lb.states()["r1"]["status"].startswith("DOWN"), timeout=30, interval=0.02)
        down_after = time.monotonic() - killed_at
        assert wait_until(lambda: not group_members(victim.pgid), timeout=30)
        at_down = {log.name: len(log.ok) for log in clients.refresh()}
        # the other replica keeps serving every client
        assert clients.wait_for(lambda log: len(log.ok) >= at_down[log.name] + 10, timeout=300), _summary(
            clients.refresh()
        )
        logs = clients.stop()
    finally:
        clients.kill()
    assert all(log.proc.returncode == 0 and log.run_id for log in logs), _summary(logs)
    assert lost_acknowledged(logs, settings) == {}
    acked, failed = sum(len(log.ok) for log in logs), sum(len(log.failed) for log in logs)
    assert failed <= 3 * len(logs), f"more than the requests in flight failed: {_summary(logs)}"
    states = lb.states()
    record_property("down_after_s", round(down_after, 2))
    record_property("acknowledged", acked)
    record_property("failed", failed)
    print(
        f"\nreplica kill: r1 DOWN in HAProxy after {down_after:.2f} s; {acked} metrics acknowledged, all stored; "
        f"{failed} calls failed; r0 served {states['r0']['sessions_total']} sessions, "
        f"{states['r0']['redispatches'] + states['r1']['redispatches']} requests redispatched"
    )

    status = inv("cluster.status", env=env)
    assert status.returncode == 1, status.stdout + status.stderr
    r1_row = next(line for line in status.stdout.splitlines() if line.startswith("r1 "))
    assert "dead" in r1_row and "DOWN" in r1_row, status.stdout
    assert "the cluster is degraded: r1 DOWN" in status.stderr

    began = time.monotonic()
    again = inv("cluster.up", env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "r0 already running" in again.stdout and "r1 ready in" in again.stdout
    record_property("restored_s", round(time.monotonic() - began, 1))
    status = inv("cluster.status", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert [line.split()[5] for line in status.stdout.splitlines() if line.startswith(("r0 ", "r1 "))] == ["UP", "UP"]

    down = inv("cluster.down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_in(settings.state_path) == [] and pid_files(settings.state_path) == []
    assert port_is_free("127.0.0.1", settings.cluster.lb.port) and port_is_free("127.0.0.1", r0.port)
    assert inv("cluster.status", env=env).returncode == 3


def test_cluster_up_on_sqlite_is_refused_in_one_line_and_starts_nothing(sqlite_env):
    env, settings = sqlite_env
    result = inv("cluster.up", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: a cluster needs backend postgres: SQLite is one file on one machine, and its single writer "
        "would serialise every replica; use --backend postgres (and `inv db.start`)"
    ]
    assert "Traceback" not in result.stdout + result.stderr
    assert processes_in(settings.state_path) == [] and pid_files(settings.state_path) == []
