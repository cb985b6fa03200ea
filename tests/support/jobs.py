"""A job MLflow's server can run, and how to submit one and wait for it (as MLflow's own job tests do).

MLflow runs only the job functions it lists; `_MLFLOW_SUPPORTED_JOB_FUNCTION_LIST` and
`_MLFLOW_ALLOWED_JOB_NAME_LIST` add one (MLflow's tests/server/jobs use the same variables), and the
job's subprocess imports it from PYTHONPATH. Submitting goes through the server's job API
(`POST /ajax-api/3.0/jobs/`), the one MLflow's UI uses.
"""

from __future__ import annotations

import time

import requests
from mlflow.server.jobs import job

from tasks.libs.core.settings import PROJECT_ROOT

JOB_NAME = "mlflow_ops_add"
FINAL = ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED")


@job(name=JOB_NAME, max_workers=1)
def add(x: int, y: int) -> int:
    return x + y


def job_server_env() -> dict[str, str]:
    """server.env that lets the server run `add`."""
    return {
        "_MLFLOW_SUPPORTED_JOB_FUNCTION_LIST": f"{__name__}.add",
        "_MLFLOW_ALLOWED_JOB_NAME_LIST": JOB_NAME,
        "PYTHONPATH": str(PROJECT_ROOT),
    }


def submit_add(url: str, x: int, y: int, *, verify: str | bool = True) -> str:
    """The job id of a new `add` job submitted through the server (verify: the CA file for https)."""
    response = requests.post(
        f"{url}/ajax-api/3.0/jobs/", json={"job_name": JOB_NAME, "params": {"x": x, "y": y}}, timeout=30, verify=verify
    )
    response.raise_for_status()
    return response.json()["job_id"]


def wait_for_job(url: str, job_id: str, timeout: float = 120, *, verify: str | bool = True) -> dict:
    """The job as the server reports it once it is final (or the last answer at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = requests.get(f"{url}/ajax-api/3.0/jobs/{job_id}", timeout=30, verify=verify).json()
        if found.get("status") in FINAL or time.monotonic() > deadline:
            return found
        time.sleep(0.5)
