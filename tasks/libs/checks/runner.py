"""Prove that a running MLflow tracking server works end to end.

run_checks() runs eleven checks in order against a server URL: experiment, params, metrics,
dataset, artifact, model, model registry, tracing, prompts, web UI and storage. Each ends
PASS, FAIL or SKIPPED with a one-line reason and its duration; a failure never stops an
independent later check, and a check whose prerequisite failed is SKIPPED with "needs <check>".

On a server with workspaces on (its server-info says so), the checks create a workspace of
their own and make every request in it: MLflow's client sends the X-MLFLOW-WORKSPACE header
for the workspace set with mlflow.set_workspace (MLFLOW_WORKSPACE).

An https server is verified, never trusted blindly: the client (MLflow's, through
MLFLOW_TRACKING_SERVER_CERT_PATH), the health probes, the OTLP exporter and the browser all
check its certificate against ca_file (or the system's trust store).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import secrets as _secrets
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from tasks.libs.checks.cleanup import cleanup_check_objects
from tasks.libs.checks.context import DEFAULT_BROWSER, CheckContext
from tasks.libs.checks.failures import describe_error
from tasks.libs.core.redact import redact
from tasks.libs.core.tls import CERT_PATH_ENV
from tasks.libs.reporting import formats
from tasks.libs.reporting.records import (
    FAIL,
    PASS,
    SKIPPED,
    CheckFailed,
    CheckResult,
    CheckSkipped,
    Report,
)

NAME_PREFIX = "mlflow-ops-check"

# For the duration of a run: a dead server fails fast instead of retrying for minutes,
# printing run URLs to stdout is off, and the model this run just logged may be loaded.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    # Traces are exported when their root span ends, not by a background queue: a trace the
    # server refuses is refused while the tracing check listens.
    "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",
}
SERVER_INFO = "/api/3.0/mlflow/server-info"


@dataclass
class Check:
    name: str
    run: Callable[[CheckContext], str]  # returns the PASS reason; raises CheckFailed/CheckSkipped
    needs: tuple[str, ...] = ()


def all_checks() -> list[Check]:
    from tasks.libs.checks import genai as genai_checks
    from tasks.libs.checks import storage as storage_check
    from tasks.libs.checks import tracking as tracking_checks
    from tasks.libs.checks import ui as ui_check

    return [
        Check("experiment", tracking_checks.check_experiment),
        Check("params", tracking_checks.check_params, needs=("experiment",)),
        Check("metrics", tracking_checks.check_metrics, needs=("experiment",)),
        Check("dataset", tracking_checks.check_dataset, needs=("experiment",)),
        Check("artifact", tracking_checks.check_artifact, needs=("experiment",)),
        Check("model", tracking_checks.check_model, needs=("experiment",)),
        Check("model registry", tracking_checks.check_registry, needs=("model",)),
        Check("tracing", genai_checks.check_tracing, needs=("experiment",)),
        Check("prompts", genai_checks.check_prompts, needs=("experiment",)),
        Check("web UI", ui_check.check_web_ui, needs=("experiment", "params", "metrics")),
        Check("storage", storage_check.check_storage),
    ]


def run_checks(
    tracking_uri: str,
    *,
    report_dir: Path,
    store_uri: str | None = None,
    store_skip_reason: str | None = None,
    artifacts_dir: Path | None = None,
    bucket: Any = None,
    client_env: dict[str, str] | None = None,
    browser: str | None = DEFAULT_BROWSER,
    ca_file: str | Path | None = None,
    cleanup: bool = False,
    on_result: Callable[[CheckResult], None] | None = None,
    checks: list[Check] | None = None,
    workspace: bool | None = None,
    otlp_url: str | None = None,
) -> Report:
    """Run every check against the server at tracking_uri; never raises for a server's fault.

    store_uri is the server's SQLAlchemy backend URI (password revealed; it is never written
    out), artifacts_dir its --artifacts-destination on disk, or bucket (a BucketView) when the
    artifacts live in S3. client_env is what the client needs besides (direct mode: the S3
    endpoint and credentials), set for the run only. ca_file is the CA an https server is
    verified with (default MLFLOW_TRACKING_SERVER_CERT_PATH, else the system's trust store). on_result
    is called after each check, e.g. to print progress. cleanup deletes what the checks made
    afterwards. workspace: run in a workspace of the checks' own (None: when the server's
    server-info says workspaces are on). otlp_url: the server's address for OTLP exporters, when
    it differs from tracking_uri.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    url = tracking_uri.rstrip("/")
    hidden = _secrets_in(url, store_uri)
    stamp = formats.stamp() + "-" + _secrets.token_hex(2)
    ca = str(ca_file or os.environ.get(CERT_PATH_ENV) or "") or None
    if workspace is None:
        workspace = workspaces_enabled(url, verify=ca or True)
    report = Report(
        tracking_uri=redact(url),
        store=redact(store_uri) if store_uri else None,
        started_at=_now(),
        experiment_name=f"{NAME_PREFIX}-{stamp}",
        registered_model=f"{NAME_PREFIX}-model-{stamp}",
        prompt=f"{NAME_PREFIX}-prompt-{stamp}",
        workspace=f"{NAME_PREFIX}-{stamp}" if workspace else None,
        report_dir=report_dir,
    )
    client_env = {**(client_env or {}), **({CERT_PATH_ENV: ca} if ca else {})}
    with client_environment(url, client_env), tempfile.TemporaryDirectory(prefix="mlflow-ops-check-") as work:
        from mlflow import MlflowClient

        ctx = CheckContext(
            url=url,
            client=MlflowClient(tracking_uri=url, registry_uri=url),
            work_dir=Path(work),
            report_dir=report_dir,
            experiment_name=report.experiment_name,
            run_name=f"{NAME_PREFIX}-run-{stamp}",
            model_name=report.registered_model,
            store_uri=store_uri,
            store_skip_reason=store_skip_reason,
            artifacts_dir=Path(artifacts_dir) if artifacts_dir else None,
            bucket=bucket,
            browser=browser,
            ca_file=ca,
            workspace=report.workspace,
            otlp_url=otlp_url.rstrip("/") if otlp_url else None,
            prompt_name=report.prompt,
            trace_name=f"trace-{stamp}",  # short: the traces view shows it in the input column
        )
        steps = list(checks or all_checks())
        if cleanup:
            steps.append(Check("cleanup", cleanup_check_objects))
        passed = ctx.passed
        for number, check in enumerate(steps, start=1):
            if check.name == "cleanup":
                _finish_run(ctx)  # while its experiment is still there
            result = _run_one(number, check, ctx, passed, hidden)
            report.checks.append(result)
            if result.status == PASS:
                passed.add(check.name)
            if on_result:
                on_result(result)
        if not cleanup:
            _finish_run(ctx)
        report.experiment_id, report.run_id, report.screenshot = ctx.experiment_id, ctx.run_id, ctx.screenshot
        report.trace_ids = list(ctx.trace_ids)
    report.finished_at = _now()
    return report


def _run_one(number: int, check: Check, ctx: CheckContext, passed: set[str], hidden: tuple[str, ...]) -> CheckResult:
    missing = [need for need in check.needs if need not in passed]
    if missing:
        return CheckResult(number, check.name, SKIPPED, "needs " + ", ".join(missing), 0.0)
    ctx.latencies = []
    details: dict = {}
    start = time.perf_counter()
    try:
        status, reason = PASS, check.run(ctx)
    except CheckSkipped as exc:
        status, reason = SKIPPED, str(exc)
    except CheckFailed as exc:
        status, reason = FAIL, str(exc)
    except Exception as exc:  # the server answered wrongly or not at all: a FAIL, not a crash
        status, reason = FAIL, describe_error(exc, ctx.url)
        details["traceback"] = redact(traceback.format_exc(limit=6), hidden)
    duration = time.perf_counter() - start
    return CheckResult(number, check.name, status, redact(reason, hidden), duration, list(ctx.latencies), details)


def _finish_run(ctx: CheckContext) -> None:
    """Mark the check run FINISHED if it is still RUNNING; a dead server is already reported."""
    if ctx.run_id is None:
        return
    with contextlib.suppress(Exception):
        if ctx.client.get_run(ctx.run_id).info.status == "RUNNING":
            ctx.client.set_terminated(ctx.run_id)


def workspaces_enabled(url: str, timeout: float = 5.0, verify: str | bool = True) -> bool:
    """The server runs with workspaces on (its server-info says so; an old or dead server: no)."""
    try:
        response = requests.get(f"{url}{SERVER_INFO}", timeout=timeout, verify=verify)
        return response.status_code == 200 and response.json().get("workspaces_enabled") is True
    except (requests.RequestException, ValueError):
        return False


@contextlib.contextmanager
def client_environment(url: str, extra: dict[str, str] | None = None) -> Iterator[None]:
    """Set CLIENT_ENV (plus extra) and the fluent API's tracking/registry URI; restore both afterwards."""
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service

    # set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI.
    from mlflow.utils.workspace_context import set_workspace

    extra = extra or {}
    keys = [*CLIENT_ENV, *extra, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_WORKSPACE"]
    saved_env = {key: os.environ.get(key) for key in keys}
    saved_tracking = _tracking_service.utils._tracking_uri
    saved_registry = _model_registry.utils._registry_uri
    # create_model_version logs an INFO line per version while it waits for READY.
    registry_log = logging.getLogger("mlflow.store.model_registry.abstract_store")
    saved_level = registry_log.level
    registry_log.setLevel(logging.WARNING)
    os.environ.update(CLIENT_ENV)
    os.environ.update(extra)
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    try:
        yield
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        set_workspace(None)  # the checks' workspace, if they set one (restored from saved_env below)
        registry_log.setLevel(saved_level)
        _tracking_service.utils._tracking_uri = saved_tracking
        _model_registry.utils._registry_uri = saved_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _secrets_in(*uris: str | None) -> tuple[str, ...]:
    found = []
    for uri in uris:
        if uri and "://" in uri:
            password = urlsplit(uri).password
            if password:
                found += [password, unquote(password)]
    return tuple(found)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
