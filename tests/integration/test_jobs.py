"""MLflow's server-side jobs on one server as `server.start` runs it: on by default, executor engine."""

from __future__ import annotations

import shutil

import pytest

from tests.support.jobs import job_server_env, submit_add, wait_for_job
from tests.support.settings import live_server, make_settings, make_state_dir

pytestmark = pytest.mark.integration


def test_a_job_submitted_to_the_default_server_runs_to_its_result():
    path = make_state_dir()
    settings = make_settings(path, backend="sqlite", **{"server.env": job_server_env()})
    assert settings.server.job_execution and settings.server.job_engine == "executor"
    try:
        with live_server(settings) as server:
            found = wait_for_job(server.url, submit_add(server.url, 3, 4), timeout=240)
            assert (found["status"], found["result"]) == ("SUCCEEDED", 7), found
    finally:
        shutil.rmtree(path, ignore_errors=True)
