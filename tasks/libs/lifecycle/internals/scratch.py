"""Stores and servers that exist for a moment: a rehearsal copy, a migrated store under test.

`store_settings` points the configured settings at another store (a SQLite file, or another
database on the same PostgreSQL) with a state dir of its own, a free port and no sign-in, so
a scratch server never shares a pid file, a port or an artifact folder with the user's.
`deployment_checks` starts `mlflow server` there (the house start_server), with workspaces on when
the store has any in use, runs the deployment checks without the web UI (a browser costs more than
it proves about a store) and stops it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.libs.checks.runner import all_checks, run_checks
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import client_ca
from tasks.libs.lifecycle.internals.journal import journal_dir
from tasks.libs.lifecycle.internals.migrate_verify import workspaces_in_use
from tasks.libs.lifecycle.internals.pgtools import pinned_password, with_database
from tasks.libs.reporting.records import PASS, Report
from tasks.libs.reporting.writers import write_reports
from tasks.libs.server.control import start_server, stop_server


def scratch_dir(settings: Settings, name: str) -> Path:
    path = journal_dir(settings) / name
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def store_settings(
    settings: Settings, *, state_dir: Path, sqlite_file: Path | None = None, database: str | None = None
) -> Settings:
    """settings aimed at another store, living in state_dir, on a free port, without sign-in."""
    copy = pinned_password(settings) if settings.backend == "postgres" else settings.model_copy(deep=True)
    if database is not None:
        copy = with_database(copy, database)
    copy.state_dir = str(state_dir)
    copy.server.port = free_port(copy.server.host if copy.server.host != "0.0.0.0" else "127.0.0.1")
    copy.server.host = "127.0.0.1"
    copy.server.workers = 1
    copy.server.fallback_to_sqlite = False
    copy.server.auth.enabled = False
    if sqlite_file is not None:
        copy.sqlite.path = str(sqlite_file)
    return copy


def deployment_checks(settings: Settings, report_dir: Path) -> Report:
    """A server on the store `settings` names, the deployment checks without the web UI, the server stopped.

    Raises UserError when the server does not start; a Report with failures otherwise.
    """
    if report_dir.exists():
        shutil.rmtree(report_dir, ignore_errors=True)
    if not settings.server.workspaces and workspaces_in_use(backend_store_uri(settings, reveal=True)):
        # MLflow refuses to serve a store with workspaces in use unless they are on; the checks then
        # run in a workspace of their own, beside the store's.
        settings = settings.model_copy(deep=True)
        settings.server.workspaces = True
    try:
        start_server(settings)
    except UserError as exc:
        raise UserError(f"a server on the store did not start: {str(exc).splitlines()[0]}") from None
    try:
        report = run_checks(
            settings.server.url,
            report_dir=report_dir,
            store_uri=backend_store_uri(settings, reveal=True),
            artifacts_dir=settings.artifacts_dir,
            browser=None,
            ca_file=client_ca(settings),  # server.tls on: the scratch server serves HTTPS too
            checks=[c for c in all_checks() if c.name != "web UI"],
        )
    finally:
        stop_server(settings)
    write_reports(report, report_dir)
    return report


def checks_summary(report: Report) -> str:
    passed = [c.name for c in report.checks if c.status == PASS]
    if report.failed:
        first = report.failed[0]
        return f"{len(report.failed)} of {len(report.checks)} failed ({first.name}: {first.reason})"
    return f"{len(passed)} passed ({', '.join(passed)}); web UI not run"
