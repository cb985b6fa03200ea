"""The deployment checks must catch broken deployments, not just bless healthy ones."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tests.conftest import LiveServer, make_settings
from tasks.credentials import backend_store_uri
from tasks.mlflow_server import start_server, stop_server
from tasks.processes import free_port
from tasks.check_reports import format_table, to_markdown, write_reports
from tasks.check_results import FAIL, PASS, SKIPPED, CheckFailed, CheckSkipped, Latency
from tasks.deployment_checks import CLIENT_ENV, Check, describe_error, run_checks
from tasks.storage_check import check_sqlite_file, local_artifact_path, sqlite_path
from tasks.ui_check import usable_browser

CHROMIUM = "/usr/bin/chromium"


def by_name(report):
    return {c.name: c for c in report.checks}


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: the port was free a moment ago


# --- no server, runner, reports ---------------------------------------------------------


def test_no_server_fails_fast_with_a_clear_reason(tmp_path):
    url = dead_url()
    start = time.monotonic()
    report = run_checks(url, report_dir=tmp_path, browser=None, cleanup=True)
    elapsed = time.monotonic() - start
    checks = by_name(report)
    assert checks["experiment"].status == FAIL
    assert checks["experiment"].reason == f"no server answers at {url} (connection refused)"
    for name in ("params", "metrics", "dataset", "artifact", "model", "web UI"):
        assert checks[name].status == SKIPPED and checks[name].reason.startswith("needs experiment"), name
    assert checks["model registry"].reason == "needs model"
    assert checks["storage"].status == SKIPPED
    assert checks["cleanup"].status == SKIPPED and checks["cleanup"].reason.startswith("nothing to clean up")
    assert not report.ok
    # Not a speed target: MLflow's default retries would take minutes here.
    assert elapsed < 60


def test_client_environment_is_restored(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    before_uri = mlflow.get_tracking_uri()
    before_env = {key: os.environ.get(key) for key in [*CLIENT_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"]}
    run_checks(dead_url(), report_dir=tmp_path, browser=None)
    assert {key: os.environ.get(key) for key in before_env} == before_env
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert mlflow.get_tracking_uri() == before_uri


def test_a_failing_check_does_not_stop_independent_ones(tmp_path):
    def ok(ctx):
        return "fine"

    def broken(ctx):
        raise CheckFailed("broken on purpose")

    def crashes(ctx):
        raise KeyError("surprise")

    def skips(ctx):
        raise CheckSkipped("nothing to do here")

    checks = [
        Check("a", broken),
        Check("b", ok, needs=("a",)),
        Check("c", ok),
        Check("d", crashes),
        Check("e", skips),
        Check("f", ok, needs=("c", "e")),
    ]
    report = run_checks(dead_url(), report_dir=tmp_path, browser=None, checks=checks)
    got = {c.name: (c.status, c.reason) for c in report.checks}
    assert got["a"] == (FAIL, "broken on purpose")
    assert got["b"] == (SKIPPED, "needs a")
    assert got["c"] == (PASS, "fine")
    assert got["d"] == (FAIL, "KeyError: 'surprise'")
    assert "Traceback" in by_name(report)["d"].details["traceback"]
    assert got["e"] == (SKIPPED, "nothing to do here")
    assert got["f"] == (SKIPPED, "needs e")


def test_reports_never_contain_a_password(tmp_path):
    store = f"postgresql+psycopg2://mlflow_user:hunter2%40x@127.0.0.1:{free_port()}/mlflow"
    url = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    report = run_checks(url, report_dir=tmp_path, store_uri=store, browser=None)
    checks = by_name(report)
    assert checks["storage"].status == FAIL and "cannot connect" in checks["storage"].reason
    texts = [format_table(report)] + [p.read_text() for p in write_reports(report, tmp_path).values()]
    for text in texts:
        for secret in ("hunter2", "s3cret-pw"):
            assert secret not in text
    assert "alice:***@" in texts[0]


def test_report_files_show_results_durations_and_latency_warnings(tmp_path):
    def slow_ok(ctx):
        ctx.latencies.append(Latency("UI page", "runs page", 2.5))
        ctx.latencies.append(Latency("logging call", "log_param", 0.1))
        return "fine but slow"

    def broken(ctx):
        raise CheckFailed("params | read back wrong")

    checks = [Check("slow", slow_ok), Check("broken", broken), Check("later", slow_ok, needs=("broken",))]
    report = run_checks(dead_url(), report_dir=tmp_path, browser=None, checks=checks)
    assert report.warnings == ["slow: UI page over budget: runs page took 2.50 s (budget 2 s)"]
    assert by_name(report)["slow"].status == PASS  # over budget warns, never fails
    paths = write_reports(report, tmp_path)

    suite = ET.parse(paths["junit"]).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='02 broken']/failure")
    assert failure.get("message") == "params | read back wrong"

    data = json.loads(paths["json"].read_text())
    assert data["summary"]["FAIL"] == 1 and data["summary"]["ok"] is False
    assert data["checks"][0]["latencies"][0]["over_budget"] is True

    markdown = paths["markdown"].read_text()
    assert "params \\| read back wrong" in markdown  # a pipe must not break the table
    assert "UI page 2.50 s (2 s) WARNING" in markdown
    assert "FAILED: 1 passed, 1 failed, 1 skipped" in format_table(report)


def test_deployment_task_exits_non_zero_when_a_check_fails(tmp_path, monkeypatch):
    from tasks.testing import deployment

    for key in [k for k in os.environ if k.startswith("MLFLOW_OPS_")]:
        monkeypatch.delenv(key)
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    out = tmp_path / "reports"
    with pytest.raises(Exit) as exc:
        deployment(Context(), url=dead_url(), report_dir=str(out), browser="none", config=str(empty))
    assert exc.value.code == 1 and "experiment" in str(exc.value.message)
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "junit.xml"}
    storage = json.loads((out / "report.json").read_text())["checks"][8]
    assert storage["status"] == SKIPPED and "not the configured server" in storage["reason"]


def test_deployment_task_reports_an_unusable_report_dir_in_one_line(tmp_path):
    from tasks.testing import deployment

    blocker = tmp_path / "file"
    blocker.write_text("")
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    with pytest.raises(Exit) as exc:
        deployment(Context(), url=dead_url(), report_dir=str(blocker / "reports"), config=str(empty))
    assert exc.value.code == 1
    assert exc.value.message == f"error: cannot create report directory {blocker / 'reports'}: Not a directory"


def test_describe_error_strips_sql_and_names_http_status():
    class MlflowishError(Exception):
        __module__ = "mlflow.exceptions"

    sql_error = MlflowishError(
        "BAD_REQUEST: (sqlite3.DatabaseError) file is not a database\n[SQL: SELECT runs.run_uuid FROM runs]"
    )
    assert describe_error(sql_error, "u") == "the server's database failed: (sqlite3.DatabaseError) file is not a database"
    http_error = MlflowishError(
        "API request to http://h:1/api/2.0/mlflow-artifacts/artifacts/x failed with exception "
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded (Caused by ResponseError('too many 500 error responses'))"
    )
    assert describe_error(http_error, "u") == "the server answered HTTP 500 to /api/2.0/mlflow-artifacts/artifacts/x"


# --- storage check on files we break ourselves ------------------------------------------------


def make_store(path: Path, *, orphan: bool = False) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY);
        CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, experiment_id INTEGER REFERENCES experiments(experiment_id));
        INSERT INTO experiments VALUES (1, 'e');
        INSERT INTO runs VALUES ('r1', 1);
        """
    )
    if orphan:  # foreign_keys is off on this connection, as on any connection that did not ask
        conn.execute("INSERT INTO runs VALUES ('r2', 99)")
    conn.commit()
    conn.close()
    return path


def test_sqlite_storage_check_passes_on_a_sound_store(tmp_path):
    assert "integrity ok, no orphan rows in 3 tables" in check_sqlite_file(make_store(tmp_path / "ok.db"))


def test_sqlite_storage_check_finds_orphan_rows(tmp_path):
    with pytest.raises(CheckFailed, match=r"foreign key points nowhere: runs -> experiments: 1"):
        check_sqlite_file(make_store(tmp_path / "orphan.db", orphan=True))


def test_sqlite_storage_check_finds_a_corrupt_file(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(CheckFailed, match="not a database"):
        check_sqlite_file(path)


def test_sqlite_storage_check_finds_a_missing_file_and_a_foreign_database(tmp_path):
    with pytest.raises(CheckFailed, match="does not exist"):
        check_sqlite_file(tmp_path / "missing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(CheckFailed, match="not an MLflow store"):
        check_sqlite_file(other)


def test_store_and_artifact_paths(tmp_path):
    assert sqlite_path("sqlite:////abs/dir/mlflow.db") == Path("/abs/dir/mlflow.db")
    assert sqlite_path("sqlite:////abs/my%20dir/mlflow.db?timeout=5") == Path("/abs/my dir/mlflow.db")
    with pytest.raises(CheckSkipped):
        sqlite_path("sqlite://")
    assert local_artifact_path("mlflow-artifacts:/1/abc/artifacts", tmp_path) == tmp_path / "1/abc/artifacts"
    assert local_artifact_path("mlflow-artifacts://h:5000/1/abc/artifacts", tmp_path) == tmp_path / "1/abc/artifacts"
    assert local_artifact_path("file:///srv/art/1", None) == Path("/srv/art/1")
    assert local_artifact_path("s3://bucket/1", tmp_path) is None
    assert local_artifact_path("mlflow-artifacts:/1/abc", None) is None


def test_web_ui_check_is_skipped_without_a_browser():
    with pytest.raises(CheckSkipped, match="no browser at /nonexistent/chromium"):
        usable_browser("/nonexistent/chromium")
    with pytest.raises(CheckSkipped, match="turned off"):
        usable_browser(None)


# --- real servers, healthy and broken ---------------------------------------------------------


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
        server.url, report_dir=tmp_path, store_uri=server.store_uri, artifacts_dir=server.artifacts_dir,
        browser=CHROMIUM, cleanup=True,
    )
    statuses = {c.name: (c.status, c.reason) for c in report.checks}
    ui_expected = PASS if os.path.isfile(CHROMIUM) else SKIPPED
    assert statuses.pop("web UI")[0] == ui_expected
    assert all(status == PASS for status, _ in statuses.values()), statuses
    assert "integrity ok" in statuses["storage"][1] and "artifact files on disk" in statuses["storage"][1]
    assert report.experiment_name.startswith("mlflow-ops-check-")
    if ui_expected == PASS:
        assert report.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![experiment runs page]({report.screenshot.name})" in to_markdown(report)
    client = MlflowClient(server.url, server.url)
    assert client.get_experiment(report.experiment_id).lifecycle_stage == "deleted"
    assert client.search_registered_models(filter_string=f"name = '{report.registered_model}'") == []


@pytest.mark.integration
def test_unwritable_artifact_destination_fails_artifact_and_model(unwritable_artifacts_server, tmp_path):
    server = unwritable_artifacts_server
    report = run_checks(
        server.url, report_dir=tmp_path, store_uri=server.store_uri, artifacts_dir=server.artifacts_dir,
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
        server.url, report_dir=tmp_path, store_uri=server.store_uri, artifacts_dir=server.artifacts_dir,
        browser=None, on_result=wreck_database_after_metrics,
    )
    checks = by_name(report)
    assert [checks[n].status for n in ("experiment", "params", "metrics")] == [PASS] * 3
    for name in ("dataset", "artifact", "model"):
        assert checks[name].status == FAIL
        assert "database failed" in checks[name].reason and "not a database" in checks[name].reason, name
    assert checks["storage"].status == FAIL and f"{server.settings.sqlite_file}: file is not a database" in checks["storage"].reason


@pytest.mark.integration
def test_healthy_postgres_server_passes_every_check(request, tmp_path):
    try:
        server = request.getfixturevalue("postgres_server")
    except pytest.FixtureLookupError:
        pytest.skip("no postgres_server fixture in tests/conftest.py")
    report = run_checks(
        server.url, report_dir=tmp_path, store_uri=server.store_uri, artifacts_dir=server.artifacts_dir,
        browser=CHROMIUM, cleanup=True,
    )
    statuses = {c.name: (c.status, c.reason) for c in report.checks}
    assert statuses.pop("web UI")[0] == (PASS if os.path.isfile(CHROMIUM) else SKIPPED)
    assert all(status == PASS for status, _ in statuses.values()), statuses
    assert "no orphan rows across" in statuses["storage"][1], statuses["storage"]
    assert "artifact files on disk" in statuses["storage"][1]


@pytest.mark.integration
def test_postgres_storage_check_finds_orphan_rows(request):
    import secrets

    import psycopg2

    from tasks.storage_check import check_postgres

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
            check_postgres(f"{server.store_uri}{separator}options=-csearch_path%3D{schema}")
        assert "runs -> experiments (runs_experiment_fk): 1" in str(failed.value)
        assert "foreign keys not validated: runs_experiment_fk" in str(failed.value)
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()
