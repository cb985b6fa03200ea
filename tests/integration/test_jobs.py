"""MLflow's server-side jobs on one server as `server.start` runs it: on by default, executor engine.

The job is registered as MLflow's own job tests register theirs (tests/support/jobs.py), submitted
through the server's job API and waited for: both engines MLflow 3.17 offers must run it.
"""

from __future__ import annotations

import shutil

import pytest

from tests.support.jobs import job_server_env, submit_add, wait_for_job
from tests.support.settings import live_server, make_settings, make_state_dir

pytestmark = pytest.mark.integration


def test_jobs_are_on_by_default_with_the_executor_engine():
    settings = make_settings(make_state_dir())
    assert settings.server.job_execution and settings.server.job_engine == "executor"
    shutil.rmtree(settings.state_path, ignore_errors=True)


@pytest.mark.parametrize("engine", ["executor", "huey"])
def test_a_job_submitted_to_the_server_runs_to_its_result(engine):
    path = make_state_dir()
    settings = make_settings(path, backend="sqlite", **{"server.env": job_server_env(), "server.job_engine": engine})
    try:
        with live_server(settings) as server:
            found = wait_for_job(server.url, submit_add(server.url, 3, 4), timeout=240)
            assert (found["status"], found["result"]) == ("SUCCEEDED", 7), found
    finally:
        shutil.rmtree(path, ignore_errors=True)
