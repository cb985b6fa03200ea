"""The deployment checks must catch broken deployments, not just bless healthy ones."""

from __future__ import annotations

import os

import pytest

from tasks.libs.checks.runner import all_checks, run_checks
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.reporting.records import (
    FAIL,
    PASS,
    SKIPPED,
    CheckFailed,
)
from tasks.libs.reporting.writers import to_markdown
from tasks.libs.server.control import start_server, stop_server
from tests.support.checks import by_name
from tests.support.settings import LiveServer, make_settings

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def healthy_server(state_dir):
    # One worker and no WAL: overwriting the database file in place must reach the server.
    settings = make_settings(state_dir, **{"server.workers": 1, "sqlite.wal": False})
    start_server(settings)
    yield LiveServer(settings, settings.server.url, backend_store_uri(settings), settings.artifacts_dir)
    stop_server(settings)


@pytest.fixture
def unwritable_artifacts_server(healthy_server):
    # We run as root, so a 0500 directory would not stop the server; a regular file where
    # the artifact destination should be does: mkdir under it fails with ENOTDIR for anyone.
    healthy_server.artifacts_dir.rmdir()
    healthy_server.artifacts_dir.write_text("not a directory\n")
    return healthy_server


@pytest.mark.integration
def test_healthy_server_passes_every_check_and_cleans_up(healthy_server, tmp_path):
    from mlflow import MlflowClient

    server = healthy_server
    report = run_checks(
        server.url,
        report_dir=tmp_path,
        store_uri=server.store_uri,
        artifacts_dir=server.artifacts_dir,
        browser=CHROMIUM,
        cleanup=True,
    )
    statuses = {c.name: (c.status, c.reason) for c in report.checks}
    ui_expected = PASS if os.path.isfile(CHROMIUM) else SKIPPED
    assert statuses.pop("web UI")[0] == ui_expected
    assert all(status == PASS for status, _ in statuses.values()), statuses
    assert "integrity ok" in statuses["storage"][1] and "artifact files on disk" in statuses["storage"][1]
    assert report.experiment_name.startswith("mlflow-ops-check-")
    if ui_expected == PASS:
        assert report.screenshot is not None
        assert report.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![experiment runs page]({report.screenshot.name})" in to_markdown(report)
    client = MlflowClient(server.url, server.url)
    assert client.get_experiment(str(report.experiment_id)).lifecycle_stage == "deleted"
    assert client.search_registered_models(filter_string=f"name = '{report.registered_model}'") == []


@pytest.mark.integration
def test_unwritable_artifact_destination_fails_artifact_and_model(unwritable_artifacts_server, tmp_path):
    server = unwritable_artifacts_server
    report = run_checks(
        server.url,
        report_dir=tmp_path,
        store_uri=server.store_uri,
        artifacts_dir=server.artifacts_dir,
        browser="/nonexistent/chromium",
    )
    checks = by_name(report)
    for name in ("experiment", "params", "metrics", "dataset"):
        assert checks[name].status == PASS, (name, checks[name].reason)
    for name in ("artifact", "model"):
        assert checks[name].status == FAIL
        # The server answers 500, or resets the connection before reading a larger upload.
        assert "HTTP 500" in checks[name].reason or "dropped the connection" in checks[name].reason
        assert "artifact destination exists and is writable" in checks[name].reason
    assert checks["model registry"].status == SKIPPED and checks["model registry"].reason == "needs model"
    assert checks["web UI"].status == SKIPPED and "no browser at /nonexistent/chromium" in checks["web UI"].reason
    assert not report.ok


@pytest.mark.integration
def test_database_lost_mid_run_fails_the_checks_after_it(healthy_server, tmp_path):
    server = healthy_server

    def wreck_database_after_metrics(result):
        if result.name == "metrics":
            # In place, so the server's open connections see it too (a new file would not be).
            size = server.settings.sqlite_file.stat().st_size
            with open(server.settings.sqlite_file, "r+b") as db:
                db.write(os.urandom(size))

    report = run_checks(
        server.url,
        report_dir=tmp_path,
        store_uri=server.store_uri,
        artifacts_dir=server.artifacts_dir,
        browser=None,
        on_result=wreck_database_after_metrics,
    )
    checks = by_name(report)
    assert [checks[n].status for n in ("experiment", "params", "metrics")] == [PASS] * 3
    for name in ("dataset", "artifact", "model"):
        assert checks[name].status == FAIL
        assert "database failed" in checks[name].reason and "not a database" in checks[name].reason, name
    assert (
        checks["storage"].status == FAIL
        and f"{server.settings.sqlite_file}: file is not a database" in checks["storage"].reason
    )


@pytest.mark.integration
def test_workspace_server_passes_every_check_in_a_workspace_of_its_own_and_cleans_it_up(state_dir, tmp_path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    settings = make_settings(state_dir, **{"server.workspaces": True, "server.workers": 1})
    start_server(settings)
    try:
        report = run_checks(
            settings.server.url,
            report_dir=tmp_path,
            store_uri=backend_store_uri(settings, reveal=True),
            artifacts_dir=settings.artifacts_dir,
            browser=CHROMIUM,
            cleanup=True,
        )
        client = MlflowClient(settings.server.url)
        with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found"):
            client.get_workspace(str(report.workspace))
        experiments = [e.name for e in client.search_experiments()]  # from 'default'
    finally:
        stop_server(settings)
    statuses = {c.name: (c.status, c.reason) for c in report.checks}
    assert statuses.pop("web UI")[0] == (PASS if os.path.isfile(CHROMIUM) else SKIPPED)
    assert all(status == PASS for status, _ in statuses.values()), statuses
    assert report.workspace and report.workspace.startswith("mlflow-ops-check-")
    assert (
        f"workspace {report.workspace} created; neither listed nor found from workspace 'default'"
        in (statuses["experiment"][1])
    )
    assert f"deleted workspace {report.workspace}" in statuses["cleanup"][1]
    assert report.experiment_name not in experiments
    assert not (settings.artifacts_dir / "workspaces" / report.workspace).exists()  # CASCADE would leave it


# The checks that need no model: enough to see tracing fail alone, in a fraction of the time.
WITHOUT_MODEL = ("experiment", "params", "metrics", "tracing", "prompts", "web UI", "storage")
TRACE_TABLES = (
    "span_metrics",
    "spans",
    "trace_metrics",
    "trace_request_metadata",
    "trace_tags",
    "assessments",
    "trace_info",
)


@pytest.mark.integration
def test_otlp_refused_by_the_host_check_fails_tracing_alone(state_dir, tmp_path):
    # MLflow compares the Host header with --allowed-hosts as whole strings: a bare "localhost"
    # does not admit "localhost:<port>", which is what an OTLP exporter sends to a port.
    settings = make_settings(state_dir, **{"server.workers": 1})
    port = settings.server.port
    settings.server.allowed_hosts = [f"127.0.0.1:{port}", "localhost"]
    start_server(settings)
    try:
        report = run_checks(
            settings.server.url,
            report_dir=tmp_path,
            browser=None,
            otlp_url=f"http://localhost:{port}",
            checks=[c for c in all_checks() if c.name in WITHOUT_MODEL],
        )
    finally:
        stop_server(settings)
    checks = by_name(report)
    for name in ("experiment", "params", "metrics", "prompts"):
        assert checks[name].status == PASS, (name, checks[name].reason)
    tracing = checks["tracing"]
    assert tracing.status == FAIL
    assert f"POST http://localhost:{port}/v1/traces answered HTTP 403" in tracing.reason, tracing.reason
    assert "Invalid Host header" in tracing.reason and f"'localhost:{port}'" in tracing.reason
    assert "server.allowed_hosts" in tracing.reason


@pytest.mark.integration
def test_server_without_tracing_tables_fails_tracing_with_the_reason(healthy_server, tmp_path):
    import sqlite3

    server = healthy_server
    with sqlite3.connect(server.settings.sqlite_file) as db:  # under the running server, as a bad restore would
        for table in TRACE_TABLES:
            db.execute(f"DROP TABLE {table}")
    report = run_checks(
        server.url,
        report_dir=tmp_path,
        store_uri=server.store_uri,
        artifacts_dir=server.artifacts_dir,
        browser=CHROMIUM,
        checks=[c for c in all_checks() if c.name in WITHOUT_MODEL],
    )
    checks = by_name(report)
    for name in ("experiment", "params", "metrics", "prompts"):
        assert checks[name].status == PASS, (name, checks[name].reason)
    tracing = checks["tracing"]
    assert tracing.status == FAIL
    assert "search_traces failed: the server answered HTTP" in tracing.reason, tracing.reason
    assert "no such table: trace_info" in tracing.reason, tracing.reason
    if os.path.isfile(CHROMIUM):  # the runs page still works; the traces view is not judged
        assert checks["web UI"].status == PASS, checks["web UI"].reason
        assert "traces view not checked (the tracing check did not pass)" in checks["web UI"].reason


@pytest.mark.integration
def test_healthy_postgres_server_passes_every_check(request, tmp_path):
    try:
        server = request.getfixturevalue("postgres_server")
    except pytest.FixtureLookupError:
        pytest.skip("no postgres_server fixture in tests/conftest.py")
    report = run_checks(
        server.url,
        report_dir=tmp_path,
        store_uri=server.store_uri,
        artifacts_dir=server.artifacts_dir,
        browser=CHROMIUM,
    )
    statuses = {c.name: (c.status, c.reason) for c in report.checks}
    assert statuses.pop("web UI")[0] == (PASS if os.path.isfile(CHROMIUM) else SKIPPED)
    assert all(status == PASS for status, _ in statuses.values()), statuses
    assert "no orphan rows across" in statuses["storage"][1], statuses["storage"]
    assert "artifact files on disk" in statuses["storage"][1]
    # Without --cleanup what the checks made stays: a plain client finds the traces and the prompt.
    from mlflow import MlflowClient

    client = MlflowClient(server.url, server.url)
    found = {t.info.trace_id for t in client.search_traces(locations=[str(report.experiment_id)])}
    assert set(report.trace_ids) <= found and len(report.trace_ids) == 2, (report.trace_ids, found)
    assert client.load_prompt(f"prompts:/{report.prompt}@production").version == 1


@pytest.mark.integration
def test_postgres_storage_check_finds_orphan_rows(request):
    import secrets

    import psycopg2

    from tasks.libs.checks.storage import check_database

    try:
        server = request.getfixturevalue("postgres_server")
    except pytest.FixtureLookupError:
        pytest.skip("no postgres_server fixture in tests/conftest.py")
    dsn = "postgresql://" + server.store_uri.split("://", 1)[1]
    schema = f"check_orphans_{secrets.token_hex(3)}"
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        # The orphan goes in first; NOT VALID lets the foreign key be added over it.
        cur.execute(
            f"""
            CREATE SCHEMA {schema};
            SET search_path TO {schema};
            CREATE TABLE alembic_version (version_num text PRIMARY KEY);
            CREATE TABLE experiments (experiment_id int PRIMARY KEY);
            CREATE TABLE runs (run_uuid text PRIMARY KEY, experiment_id int);
            INSERT INTO experiments VALUES (1);
            INSERT INTO runs VALUES ('r1', 1), ('r2', 99);
            ALTER TABLE runs ADD CONSTRAINT runs_experiment_fk
                FOREIGN KEY (experiment_id) REFERENCES experiments NOT VALID;
            """
        )
    try:
        separator = "&" if "?" in server.store_uri else "?"
        with pytest.raises(CheckFailed) as failed:
            check_database(f"{server.store_uri}{separator}options=-csearch_path%3D{schema}")
        assert "runs -> experiments (runs_experiment_fk): 1" in str(failed.value)
        assert "foreign keys not validated: runs_experiment_fk" in str(failed.value)
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()
