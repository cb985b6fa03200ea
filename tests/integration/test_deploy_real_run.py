"""A real run of the systemd export: no systemd here (PID 1 is not systemd), so the test does what
the unit says, with the tool's own process handling. It reads the written unit and the
EnvironmentFile that --write-secrets wrote, runs the ExecStartPre= steps, starts ExecStart= as a
process group in WorkingDirectory= with only the unit's environment (plus what systemd itself sets
for a service), runs the deployment checks against it (the web UI check skipped), then runs the gc
unit's ExecStart=. What it cannot show: User= (the test runs as the caller) and the hardening.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.libs.checks.runner import run_checks
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.managed import Launch, ManagedProcess
from tasks.libs.core.processes import ProcessRecord, free_port
from tasks.libs.deploy.systemd import exec_words
from tasks.libs.deploy.writer import export
from tasks.libs.postgres.connection import recreate_database
from tasks.libs.reporting.records import PASS, SKIPPED
from tasks.libs.server.command import server_command
from tasks.libs.server.probes import health, store_answers
from tests.support.deploy import env_file_values, unit_entries, unit_environment
from tests.support.settings import make_state_dir

# What systemd gives a service with User= besides the unit's own variables (systemd.exec(5)).
SYSTEMD_BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@pytest.fixture
def deployed_settings(pg_settings):
    """The session's PostgreSQL, a database of this test's own (gc removes what it finds deleted)."""
    state = make_state_dir()
    settings = pg_settings.model_copy(deep=True, update={"state_dir": str(state)})
    settings.server.port = free_port()
    settings.server.workers = 1
    settings.postgres.database = "mlflow_deploy_run"
    settings.deploy.systemd.config_dir = str(state / "etc")
    settings.deploy.gc.enabled = True
    settings.deploy.gc.older_than = "0s"
    recreate_database(settings)
    yield settings
    shutil.rmtree(state, ignore_errors=True)


def unit_process(unit_dir, name: str, settings):
    """(argv, pre-steps, env, cwd) as systemd would run the unit, from the written files alone."""
    text = (unit_dir / name).read_text()
    entries = unit_entries(text)
    value = dict(entries)
    env_file = value["EnvironmentFile"]
    env = {
        **SYSTEMD_BASE_ENV,
        "HOME": settings.deploy.systemd.config_dir,
        **env_file_values(Path(env_file).read_text()),
    }
    env.update(unit_environment(text))
    pre = [exec_words(v) for k, v in entries if k == "ExecStartPre"]
    return exec_words(value["ExecStart"]), pre, env, value["WorkingDirectory"]


@pytest.mark.integration
def test_the_written_unit_runs_and_passes_the_deployment_checks(deployed_settings, tmp_path):
    settings = deployed_settings
    written = export(settings, "systemd", profile="test", out=tmp_path / "units", write_secrets=True)
    # Install the EnvironmentFile where the unit names it, as a user would.
    etc = settings.state_path / "etc"
    etc.mkdir(mode=0o700)
    shutil.copy2(written.out / "mlflow-ops.env", etc / "mlflow-ops.env")

    argv, pre, env, cwd = unit_process(written.out, "mlflow-ops.service", settings)
    assert argv == server_command(settings)  # what server.start would run
    assert "PGPASSWORD" not in unit_environment((written.out / "mlflow-ops.service").read_text())
    for step in pre:  # mlflow db upgrade
        done = subprocess.run(step, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    url = settings.server.url
    server = ManagedProcess(
        "the server started from the unit",
        pid_file=settings.state_path / "server" / "unit.pid",
        log_file=settings.state_path / "server" / "unit.log",
        record=ProcessRecord,
        grace=settings.server.stop_grace,
    )
    server.start(
        Launch(
            command=argv,
            env=env,
            cwd=Path(cwd),
            ready=lambda: None if health(url) and store_answers(url) else "not ready",
            timeout=settings.server.start_timeout,
        )
    )
    try:
        report = run_checks(
            url,
            report_dir=tmp_path / "report",
            store_uri=backend_store_uri(settings, reveal=True),
            artifacts_dir=settings.artifacts_dir,
            browser=None,
            cleanup=True,
        )
        statuses = {c.name: (c.status, c.reason) for c in report.checks}
        assert statuses.pop("web UI")[0] == SKIPPED
        assert all(status == PASS for status, _ in statuses.values()), statuses

        # The gc unit: its deleted experiment is removed for good, through the running server.
        gc_argv, _, gc_env, gc_cwd = unit_process(written.out, "mlflow-ops-gc.service", settings)
        done = subprocess.run(gc_argv, env=gc_env, cwd=gc_cwd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|No Experiment"):
            MlflowClient(url).get_experiment(str(report.experiment_id))
    finally:
        server.stop()
