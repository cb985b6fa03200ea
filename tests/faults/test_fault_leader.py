"""Fault injection (docs/faults.md case 22): only the server's first process SIGKILLed.

`mlflow server` starts uvicorn, which starts the workers, all in our process group; killing the
`mlflow server` process leaves them serving on the port. That server is still ours: status shows
it, start refuses to start another beside it, stop takes the whole group down.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from tasks.libs.core.processes import group_members, port_is_free, stop_group
from tasks.libs.core.settings import load_settings
from tasks.libs.core.waits import wait_until
from tasks.libs.server.control import ServerPaths, ServerRecord
from tasks.libs.server.probes import health
from tests.support.cli import gone, hermetic_env, inv

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _table(text: str) -> dict[str, str]:
    """`inv server.status` output (a plain two-column table) as a dict."""
    return dict(line.split(None, 1) for line in text.strip().splitlines() if line.strip())


def test_server_whose_leader_was_sigkilled_is_shown_running_and_stopped_whole(state_dir):
    env = hermetic_env(state_dir, backend="sqlite", server__workers="2")
    settings = load_settings(environ=env).settings
    started = inv("server.start", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    record = ServerRecord.read(ServerPaths.of(settings).pid_file)
    assert record is not None
    try:
        assert psutil.Process(record.pid).cmdline()[1:4] == ["-m", "mlflow", "server"]
        members = [proc.pid for proc in group_members(record.pgid)]
        assert len(members) >= 4  # mlflow server, uvicorn, its 2 workers

        os.kill(record.pid, signal.SIGKILL)  # the leader only
        assert wait_until(lambda: gone(record.pid), timeout=30)
        survivors = [proc.pid for proc in group_members(record.pgid)]
        assert len(survivors) >= 3 and health(settings.server.url), "the workers no longer serve"

        status = inv("server.status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        shown = _table(status.stdout)
        assert (shown["running"], shown["pid"], shown["healthy"]) == ("True", str(record.pid), "True")
        assert shown["leader"].startswith("gone") and int(shown["processes"]) >= 3, status.stdout

        again = inv("server.start", env=env)
        assert again.returncode == 1 and "Traceback" not in again.stderr
        assert again.stderr.strip().splitlines() == [
            f"error: the server's first process (pid {record.pid}) is gone while its workers still hold port "
            f"{settings.server.port}; `inv server.stop` stops them all, then start it again"
        ]
        assert not any(gone(pid) for pid in survivors), "a refused start stopped something"

        stopped = inv("server.stop", env=env)
        assert stopped.returncode == 0 and f"stopped the server (pid {record.pid}" in stopped.stdout, stopped.stdout
        assert all(gone(pid) for pid in members) and group_members(record.pgid) == []
        assert port_is_free(settings.server.host, settings.server.port)
        assert not ServerPaths.of(settings).pid_file.exists()
        assert inv("server.status", env=env).returncode == 3
    finally:
        stop_group(record.pgid, grace=5)  # what a failed assertion left
