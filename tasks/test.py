"""`test` collection: prove a running deployment works, probe it for known holes, and run the
project's own pytest suite."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.checks.context import DEFAULT_BROWSER
from tasks.libs.checks.runner import run_checks
from tasks.libs.checks.storage import storage_arguments
from tasks.libs.cluster.plan import lb_url
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.errors import ConfigError, UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import CERT_PATH_ENV, client_ca
from tasks.libs.reporting.writers import format_table, report_dir_for, write_reports
from tasks.libs.security.suite import run_security
from tasks.libs.security.target import target_from_settings
from tasks.libs.server.auth import client_env
from tasks.libs.server.control import running_record

DEPLOYMENT_HELP = {
    "url": "server to check (default: the configured server, settings server.url; the cluster's load balancer URL works too)",
    "report_dir": "where report.md/json, junit.xml and the screenshot go (default <state_dir>/reports/checks-<time>)",
    "cleanup": "delete what the checks made afterwards (traces, prompt, registered model, experiment; their workspace)",
    "browser": f"Chromium executable for the web UI check (default {DEFAULT_BROWSER}); 'none' skips it",
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
    "backend": "sqlite or postgres: which configured store the storage check opens",
    "otlp_url": "where OpenTelemetry exporters reach the server, when not at --url (e.g. the name collectors use)",
    "ca": "CA file an https server's certificate is verified with (default: the tool's own CA for its own "
    "server or load balancer, else MLFLOW_TRACKING_SERVER_CERT_PATH, else the system's trust store)",
}
SECURITY_HELP = {
    "url": "server to probe (default: the configured server); another URL is probed from the outside only",
    "allow_writes": "let probes create (and delete) a run, users and a model version on a server we did not start",
    "report_dir": "where report.md/json and junit.xml go (default <state_dir>/reports/security-<time>)",
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
    "backend": "sqlite or postgres: whose local files, processes and PostgreSQL the exposure probes look at",
    "ca": "CA file an https server's certificate is verified with (default: the tool's own CA for its own "
    "server or load balancer, else MLFLOW_TRACKING_SERVER_CERT_PATH, else the system's trust store)",
}
PYTEST_HELP = {"args": 'extra arguments for pytest, e.g. "-k registry -x"'}


@task(help=DEPLOYMENT_HELP)
def deployment(
    c,
    url=None,
    report_dir=None,
    cleanup=False,
    browser=None,
    profile=None,
    config=None,
    backend=None,
    ca=None,
    otlp_url=None,
):
    """Run the eleven deployment checks against a server; exit non-zero if any check fails."""
    settings = settings_from(profile, config, backend=backend).settings
    ca_file = _ca_flag(ca)
    configured_url = settings.server.url
    target = (url or configured_url).rstrip("/")
    store_uri, store_skip = None, None
    storage: dict = {"artifacts_dir": None}
    if target == lb_url(settings) and settings.backend != "postgres":  # a cluster runs on PostgreSQL only
        settings = settings_from(profile, config, backend="postgres").settings
    # The configured URL is ours only while server.start runs it: a Compose project (deploy.up) or
    # another host may publish the same address, and its store is inside it, not ours to open.
    ours = target != configured_url.rstrip("/") or running_record(settings) is not None
    if target in (configured_url.rstrip("/"), lb_url(settings)) and ours:
        os.environ.update(client_env(settings))  # sign in when the server runs with basic auth
        ca_file = ca_file or client_ca(settings)
        storage = storage_arguments(settings)
        try:
            store_uri = backend_store_uri(settings, reveal=True)
        except ConfigError as exc:
            store_skip = str(exc)
    elif not ours:
        os.environ.update(client_env(settings))
        store_skip = f"no server of ours runs at {target} (server.start did not start it); its store is unknown"
    else:
        store_skip = f"{target} is not the configured server ({configured_url}); its store is unknown"
    out_dir = _report_dir(report_dir, settings, "checks")
    if browser is None:
        browser = DEFAULT_BROWSER
    with user_errors():
        if otlp_url and urlsplit(otlp_url).scheme not in ("http", "https"):
            raise UserError(f"--otlp-url {otlp_url!r} is not an http(s) URL; give e.g. http://mlflow.internal:5000")
    print(f"checking {target}; report in {out_dir}")
    if target.startswith("https:"):
        print(f"verifying its certificate with {ca_file or os.environ.get(CERT_PATH_ENV) or 'the system trust store'}")
    report = run_checks(
        target,
        report_dir=out_dir,
        store_uri=store_uri,
        store_skip_reason=store_skip,
        **storage,
        browser=None if browser.lower() == "none" else browser,
        ca_file=ca_file,
        cleanup=cleanup,
        otlp_url=otlp_url,
        on_result=lambda r: print(f"  {r.number}. {r.name}: {r.status} ({r.duration:.1f} s)", flush=True),
    )
    paths = write_reports(report, out_dir)
    print(format_table(report))
    if report.workspace:
        print(f"workspace: {report.workspace} (the checks' own; MLFLOW_WORKSPACE={report.workspace} to look inside)")
    print("report: " + ", ".join(str(p) for p in paths.values()))
    if report.failed:
        raise Exit(f"{len(report.failed)} check(s) failed: {', '.join(c.name for c in report.failed)}", code=1)


@task(help=SECURITY_HELP)
def security(c, url=None, allow_writes=False, report_dir=None, profile=None, config=None, backend=None, ca=None):
    """Probe a live MLflow server for the holes MLflow servers have had; exit non-zero if any probe fails."""
    settings = settings_from(profile, config, backend=backend).settings
    ca_file = _ca_flag(ca)
    with user_errors():
        target = target_from_settings(
            settings, url=url, allow_writes=allow_writes, ca=str(ca_file) if ca_file else None
        )
    out_dir = _report_dir(report_dir, settings, "security")
    print(f"probing {target.url}; report in {out_dir}")
    for note in target.notes:
        print(f"note: {note}")
    with user_errors():
        report = run_security(
            target,
            report_dir=out_dir,
            on_result=lambda r: print(f"  {r.number}. {r.name}: {r.status} ({r.duration:.1f} s)", flush=True),
        )
    paths = write_reports(report, out_dir)
    print(format_table(report))
    print("report: " + ", ".join(str(p) for p in paths.values()))
    if report.failed:
        raise Exit(f"{len(report.failed)} probe(s) failed: {', '.join(c.name for c in report.failed)}", code=1)


def _ca_flag(ca: str | None) -> Path | None:
    """--ca: an existing file, absolute from here on."""
    if ca is None:
        return None
    path = Path(ca).expanduser().resolve()
    if not path.is_file():
        raise Exit(
            f"error: --ca {ca}: no such file; give the CA certificate (PEM) the server's certificate chains to", code=1
        )
    return path


def _report_dir(report_dir: str | None, settings: Settings, prefix: str) -> Path:
    with user_errors():
        return report_dir_for(settings, prefix, report_dir)


@task(help=PYTEST_HELP)
def unit(c, args=None):
    """Run the fast tests (tests/unit): no server, no database, no CLI subprocess."""
    _pytest(c, ["tests/unit"], args)


@task(name="all", help=PYTEST_HELP)
def all_(c, args=None):
    """Run the whole pytest suite: unit, integration (real servers) and faults."""
    _pytest(c, ["tests"], args)


def _pytest(c, base: list[str], args: str | None) -> None:
    command = shlex.join([sys.executable, "-m", "pytest", *base]) + (f" {args}" if args else "")
    result = c.run(command, warn=True, pty=False)
    if result.exited != 0:
        raise Exit(f"pytest exited with {result.exited}", code=result.exited)
