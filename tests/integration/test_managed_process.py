"""The managed-process abstraction on a real program: a tiny HTTP server that forks a worker.

The leader starts a child in its own process group, like `mlflow server` starts uvicorn and
its workers; both listen on the same port (SO_REUSEPORT). Killing the leader leaves the
worker serving: the group is still running, and stop must take the worker down too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from tasks.libs.core.errors import UserError
from tasks.libs.core.managed import Launch, Listener, ManagedProcess
from tasks.libs.core.processes import ProcessRecord, free_port, port_is_free
from tasks.libs.core.waits import wait_until

SERVER = textwrap.dedent("""
    import http.server, os, socket, sys, time
    port = int(sys.argv[1])
    if os.fork() == 0:
        pass  # the worker
    else:
        time.sleep(0.2)  # the leader serves too, like uvicorn's supervisor holds the socket
    srv = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler, bind_and_activate=False)
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    srv.server_bind(); srv.server_activate()
    print("secret-token listening", flush=True)
    srv.serve_forever()
""")


def _answers(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return None
    except OSError as exc:
        return f"no answer ({exc})"


def _managed(tmp_path: Path) -> ManagedProcess[ProcessRecord]:
    return ManagedProcess(
        "the test server",
        pid_file=tmp_path / "run" / "test.pid",
        log_file=tmp_path / "run" / "test.log",
        record=ProcessRecord,
        grace=2,
        secrets=("secret-token",),
    )


def _launch(tmp_path: Path, port: int, **overrides) -> Launch:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    values = dict(
        command=[sys.executable, str(script), str(port)],
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
        ready=lambda: _answers(port),
        timeout=20,
        listeners=[Listener("127.0.0.1", port, "set test.port")],
    )
    values.update(overrides)
    return Launch(**values)  # type: ignore[arg-type]


def test_a_group_whose_leader_died_is_still_running_and_stop_takes_all_of_it(tmp_path):
    port = free_port()
    process = _managed(tmp_path)
    record = process.start(_launch(tmp_path, port))
    assert len(process.members()) == 2 and process.leader_alive(record)

    os.kill(record.pid, signal.SIGKILL)
    assert wait_until(lambda: not process.leader_alive(record), timeout=10)
    assert process.running() == record, "the worker lives on: the group is running"
    assert _answers(port) is None

    message = process.stop(listeners=[Listener("127.0.0.1", port, "set test.port")])
    assert message.startswith(f"stopped the test server (pid {record.pid}")
    assert process.members(record) == [] and port_is_free("127.0.0.1", port)
    assert process.running() is None and not process.pid_file.exists()


def test_a_program_that_never_gets_ready_is_stopped_whole_with_its_log_tail_masked(tmp_path):
    port = free_port()
    process = _managed(tmp_path)
    with pytest.raises(UserError) as caught:
        process.start(_launch(tmp_path, port, ready=lambda: "never", timeout=2))
    message = str(caught.value)
    assert message.startswith("the test server did not become ready within 2 s (never); stopped it")
    assert "*** listening" in message and "secret-token" not in message
    assert process.running() is None and port_is_free("127.0.0.1", port)


def test_a_busy_port_is_refused_in_one_line_naming_the_setting(tmp_path):
    port = free_port()
    first = _managed(tmp_path)
    first.start(_launch(tmp_path, port))
    try:
        second = _managed(tmp_path / "second")
        with pytest.raises(
            UserError, match=rf"^port {port} on 127.0.0.1 is in use by pid \d+ .*; stop that or set test.port$"
        ):
            second.start(_launch(tmp_path, port))
    finally:
        first.stop()


def test_a_reused_leader_pid_is_not_ours(tmp_path):
    """A pid file whose pid now leads another program's group: nothing is ours, nothing is stopped."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        process = _managed(tmp_path)
        real = ProcessRecord.of(other.pid)
        ProcessRecord(pid=real.pid, pgid=real.pgid, create_time=real.create_time - 3600, started_at=0).write(
            process.pid_file
        )
        assert process.running() is None and not process.pid_file.exists()
        assert process.stop() == "the test server is not running"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
