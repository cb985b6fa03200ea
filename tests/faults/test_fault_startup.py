"""Fault injection (docs/faults.md cases 1, 2 and 4) where the lifecycle tests stop short.

Case 1 through the CLI (the library-level test is in test_server_lifecycle.py); case 2 with a
secret in the dying server's log (and timed against the start timeout); case 4 with a real server whose every process ignores SIGTERM
(the process-group-level test is in test_faults.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from urllib.parse import quote

import psutil
import pytest

from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import group_members, port_is_free
from tasks.libs.core.settings import load_settings
from tasks.libs.core.waits import wait_until
from tasks.libs.server.control import ServerPaths, start_server, stop_server
from tests.support.cli import hermetic_env, inv, pid_files, processes_in
from tests.support.settings import make_settings

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Loaded by every Python process of the server (PYTHONPATH): SIGTERM is ignored, and any later
# attempt to handle it (uvicorn, asyncio) is turned into "ignore" as well.
IGNORE_SIGTERM = textwrap.dedent("""
    import signal
    _signal = signal.signal
    def _stubborn(sig, handler):
        return _signal(sig, signal.SIG_IGN if sig == signal.SIGTERM else handler)
    _signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal = _stubborn
""")

DIE_AT_START = textwrap.dedent("""
    import sys
    print("could not connect to postgresql://mlflow_user:{quoted}@db/mlflow (password {raw})", flush=True)
    sys.exit(3)
""")


def _pythonpath(hook) -> str:
    return os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)


def test_cli_start_on_a_taken_port_refuses_in_one_line_and_touches_nothing(state_dir):
    env = hermetic_env(state_dir)
    port = load_settings(environ=env).settings.server.port
    holder = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: not port_is_free("127.0.0.1", port), timeout=30)
        proc = inv("server.start", env=env)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: port {port} on 127.0.0.1 is in use by pid {holder.pid} "
            f"({' '.join(psutil.Process(holder.pid).cmdline())[:80]}); stop that or pick another port (--port)"
        ]
        assert holder.poll() is None, "the program holding the port was killed"
        assert pid_files(state_dir) == [] and processes_in(state_dir) == []
        status = inv("server.status", env=env)
        assert status.returncode == 3, "the foreign program was adopted as our server"
    finally:
        holder.terminate()
        holder.wait()


def test_server_dying_at_start_is_reported_at_once_with_a_masked_log_tail(state_dir):
    secret = "Fault2-S3cr@t/?"
    # The injected fault: the server's Python dies at start-up after printing a connection
    # string with the password, raw and URL-quoted, as a failing database driver would.
    hook = state_dir / "dying"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIE_AT_START.format(raw=secret, quoted=quote(secret, safe="")))
    settings = make_settings(
        state_dir,
        **{"postgres.password": secret, "server.start_timeout": 900, "server.env": {"PYTHONPATH": _pythonpath(hook)}},
    )
    began = time.monotonic()
    with pytest.raises(UserError) as err:
        start_server(settings)
    elapsed = time.monotonic() - began
    message = str(err.value)
    assert message.startswith("the server exited during start-up\n--- last lines of ")
    assert "could not connect to postgresql://mlflow_user:***@db/mlflow (password ***)" in message
    assert secret not in message and quote(secret, safe="") not in message
    assert elapsed < settings.server.start_timeout / 2, f"reported after {elapsed:.0f} s, not at once"
    assert not ServerPaths.of(settings).pid_file.exists()
    assert processes_in(state_dir) == []


def test_server_ignoring_sigterm_is_sigkilled_and_its_port_freed(state_dir):
    hook = state_dir / "stubborn"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(IGNORE_SIGTERM)
    settings = make_settings(state_dir, **{"server.stop_grace": 3, "server.env": {"PYTHONPATH": _pythonpath(hook)}})
    record = start_server(settings).record
    members = [proc.pid for proc in group_members(record.pgid)]
    try:
        assert len(members) >= 2
        message = stop_server(settings)
        assert message == f"stopped the server (pid {record.pid}, killed)"
        assert group_members(record.pgid) == []
        assert all(
            not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in members
        )
        assert port_is_free(settings.server.host, settings.server.port)
        assert not ServerPaths.of(settings).pid_file.exists()
    finally:
        stop_server(settings)
