"""`inv full-check` as a user runs it: failures named, nothing left running, Ctrl-C safe."""

import os
import signal
import subprocess
import sys

import psutil
import pytest

from tasks.libs.core.settings import PROJECT_ROOT
from tasks.libs.core.waits import wait_until
from tests.support.cli import hermetic_env

pytestmark = pytest.mark.integration


def full_check(state_dir, *args, extra_env=None, **popen):
    env = {**hermetic_env(state_dir), **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "full-check", "--profile", "ci", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )


def leftovers(state_dir, group=None):
    """Processes started for this state dir (servers run in it, postgres names its data dir),
    and whatever is left in the pipeline's own process group (e.g. workload clients)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if (
                proc.cwd().startswith(str(state_dir))
                or str(state_dir) in " ".join(proc.cmdline())
                or os.getpgid(proc.pid) == group
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_database_that_cannot_start_fails_the_pipeline_by_name(state_dir):
    proc = full_check(
        state_dir,
        "--backend",
        "postgres",
        extra_env={"MLFLOW_OPS_POSTGRES__LOCAL__PARAMETERS": "{shared_buffers: nonsense}"},
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    assert "full-check FAILED: [postgres] db.start: PostgreSQL failed to start" in err
    assert "Traceback" not in err
    assert leftovers(state_dir) == []
    reports = list((state_dir / "reports").glob("full-check-*/full-check.json"))
    assert reports and '"status": "FAIL"' in reports[0].read_text()


def test_interrupted_run_leaves_no_process_behind(state_dir):
    proc = full_check(state_dir, "--backend", "sqlite")
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "[sqlite] workload ..." in line:  # the server is up and the workload running
            break
    assert any("server.start: ok" in line for line in seen), "".join(seen)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert wait_until(lambda: leftovers(state_dir, proc.pid) == [], timeout=30), leftovers(state_dir, proc.pid)
