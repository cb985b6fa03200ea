"""Injected faults in the server's lifecycle: what the tool does when things go wrong."""

import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import psutil
import pytest

from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import group_members, stop_group
from tasks.libs.server.control import ServerPaths, start_server
from tests.support.settings import make_settings

pytestmark = pytest.mark.integration

STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE)
    child.stdout.readline()
    print(child.pid, flush=True)
    time.sleep(600)
""")


def test_stop_escalates_to_sigkill_for_a_child_that_ignores_sigterm():
    leader = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert leader.stdout is not None
    stubborn_pid = int(leader.stdout.readline())
    assert len(group_members(leader.pid)) == 2
    assert stop_group(leader.pid, grace=1) == "killed"
    leader.wait(timeout=5)
    assert not psutil.pid_exists(stubborn_pid) or psutil.Process(stubborn_pid).status() == psutil.STATUS_ZOMBIE
    assert group_members(leader.pid) == []


def test_server_never_ready_is_killed_whole_at_the_timeout(state_dir):
    settings = make_settings(state_dir, **{"server.start_timeout": 1})
    with pytest.raises(UserError, match=r"did not become ready within 1 s \(/health does not answer\); stopped it"):
        start_server(settings)
    # The server and its workers run with the state dir as their working directory.
    assert [p for p in psutil.process_iter() if _cwd(p) == str(state_dir)] == []
    assert not ServerPaths.of(settings).pid_file.exists()


def test_foreign_host_header_is_refused(sqlite_server):
    # /health is exempt from MLflow's host check; the UI and the API are not.
    url = f"{sqlite_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Host": "evil.example"}), timeout=5)
    assert err.value.code == 403
    assert urllib.request.urlopen(url, timeout=5).status == 200


def _cwd(proc):
    try:
        return proc.cwd()
    except psutil.Error:
        return None
