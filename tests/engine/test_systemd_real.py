"""The units `deploy.systemd` writes, under a real systemd as PID 1 (a container of the session's
engine: the MLflow venv from the wheelhouse, Debian's PostgreSQL 15 as the host's database).

Installed as the README says (units in /etc/systemd/system, the EnvironmentFile 0600 in
deploy.systemd.config_dir, state_dir owned by deploy.systemd.user), then: the service starts after its
`db upgrade`, answers /health, `test.deployment` passes through it, a SIGKILL of its main process is
followed by a restart, the gc timer is listed, and after a reboot the enabled unit comes up again
once PostgreSQL does.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import requests

from tasks.libs.core.processes import free_port
from tasks.libs.core.waits import wait_ready
from tasks.libs.deploy.writer import export
from tests.support.cli import hermetic_env, inv
from tests.support.settings import make_settings, make_state_dir
from tests.support.systemd_box import SystemdBox

pytestmark = [pytest.mark.engine, pytest.mark.integration]

PASSWORD = "unit-p@ss:w#rd"
SETUP_SQL = f"CREATE USER mlflow_user PASSWORD '{PASSWORD}';\nCREATE DATABASE mlflow OWNER mlflow_user;\n"


def _health(url: str) -> str | None:
    try:
        return None if requests.get(f"{url}/health", timeout=3).status_code == 200 else "not 200"
    except requests.RequestException as exc:
        return type(exc).__name__


def test_the_units_run_under_systemd_restart_after_a_kill_and_come_back_after_a_reboot(engine, systemd_box_image):
    published = free_port()
    state = make_state_dir()
    settings = make_settings(
        Path("/var/lib/mlflow-ops"),  # the host's (the container's) state dir, as in the prod profile
        backend="postgres",
        **{
            "postgres.port": 5432,
            "postgres.password": PASSWORD,
            "server.host": "0.0.0.0",
            "server.port": 5000,
            "server.workers": 1,
            "server.allowed_hosts": [f"127.0.0.1:{published}", f"localhost:{published}", "127.0.0.1:5000"],
            "deploy.systemd.python": "/opt/mlflow/bin/python",
            "deploy.gc.enabled": True,
        },
    )
    units = export(settings, "systemd", profile="test", out=state / "units", write_secrets=True)
    box = SystemdBox(
        engine.client, systemd_box_image, "mlflow-ops-systemd-test", ports={"5000/tcp": ("127.0.0.1", published)}
    )
    url = f"http://127.0.0.1:{published}"
    try:
        began = time.monotonic()
        box.wait_booted()
        engine.timings["systemd boot"] = round(time.monotonic() - began, 1)
        box.exec("sh", "-c", "until pg_isready -q; do sleep 0.2; done")  # Debian's postgresql@15-main
        box.put("/tmp/setup.sql", SETUP_SQL.encode(), 0o644)
        box.exec("runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-q", "-f", "/tmp/setup.sql")
        box.exec("rm", "/tmp/setup.sql")
        box.exec("install", "-d", "-o", "mlflow", "-g", "mlflow", "-m", "0700", "/var/lib/mlflow-ops")
        box.exec("install", "-d", "-m", "0700", "/etc/mlflow-ops")
        box.put("/etc/mlflow-ops/mlflow-ops.env", (units.out / "mlflow-ops.env").read_bytes(), 0o600)
        for name in units.files:
            if name.endswith((".service", ".timer")):
                box.put(f"/etc/systemd/system/{name}", (units.out / name).read_bytes())
        box.exec("systemctl", "daemon-reload")
        box.exec("systemctl", "enable", "--now", "mlflow-ops.service", "mlflow-ops-gc.timer")

        assert box.exec("systemctl", "is-active", "mlflow-ops.service").strip() == "active"
        journal = box.exec("journalctl", "-u", "mlflow-ops.service", "--no-pager", "-o", "cat")
        # ExecStartPre= (mlflow db upgrade) ran, and finished before systemd called the service started
        assert journal.index("Updating database tables") < journal.index("Started mlflow-ops.service")
        assert PASSWORD not in journal and PASSWORD not in box.exec("sh", "-c", "cat /proc/[0-9]*/cmdline", check=False)
        wait_ready(lambda: _health(url), timeout=180, what="the unit's server")

        # The web UI check runs in the Compose tests (same image, same server); here the unit is the point.
        checks = inv("test.deployment", "--url", url, "--cleanup", "--browser", "none", env=hermetic_env(state))
        assert checks.returncode == 0, checks.stdout[-3000:] + checks.stderr[-2000:]

        main = box.exec("systemctl", "show", "-p", "MainPID", "--value", "mlflow-ops.service").strip()
        box.exec("systemctl", "kill", "--kill-whom=main", "-s", "SIGKILL", "mlflow-ops.service")

        def restarted() -> str | None:
            restarts = box.exec("systemctl", "show", "-p", "NRestarts", "--value", "mlflow-ops.service").strip()
            now = box.exec("systemctl", "show", "-p", "MainPID", "--value", "mlflow-ops.service").strip()
            if restarts in ("", "0") or now in ("0", main):
                return f"NRestarts={restarts} MainPID={now}"
            return _health(url)

        wait_ready(restarted, timeout=180, what="the server restarted by systemd", interval=1)
        assert "mlflow-ops-gc.timer" in box.exec("systemctl", "list-timers", "--all", "--no-pager")

        box.container.restart(timeout=30)  # a reboot: the enabled unit starts again after PostgreSQL
        box.wait_booted()
        wait_ready(lambda: _health(url), timeout=240, what="the server after a reboot", interval=1)
        assert box.exec("systemctl", "is-active", "mlflow-ops.service", "postgresql@15-main.service").split() == [
            "active",
            "active",
        ]
        boot = box.exec("journalctl", "-b", "-u", "mlflow-ops", "-u", "postgresql@15-main", "-o", "short-monotonic")
        print("\n".join(line for line in boot.splitlines() if "compat systemd cgroup" not in line)[-4000:])
    except Exception:
        print(box.exec("journalctl", "-u", "mlflow-ops.service", "--no-pager", "-n", "60", check=False))
        raise
    finally:
        box.remove()
        shutil.rmtree(state, ignore_errors=True)
