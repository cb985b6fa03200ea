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

from tasks.libs.checks.failures import describe_error
from tasks.libs.checks.runner import CLIENT_ENV, Check, run_checks
from tasks.libs.checks.storage import check_database
from tasks.libs.checks.ui import usable_browser
from tasks.libs.core.processes import free_port
from tasks.libs.reporting.records import (
    FAIL,
    PASS,
    SKIPPED,
    CheckFailed,
    CheckSkipped,
    Latency,
)
from tasks.libs.reporting.writers import format_table, write_reports
from tasks.libs.store.usage import local_artifact_path
from tests.support.checks import by_name, dead_url

CHROMIUM = "/usr/bin/chromium"


# --- no server, runner, reports ---------------------------------------------------------


def test_no_server_fails_fast_with_a_clear_reason(tmp_path):
    url = dead_url()
    start = time.monotonic()
    report = run_checks(url, report_dir=tmp_path, browser=None, cleanup=True)
    elapsed = time.monotonic() - start
    checks = by_name(report)
    assert checks["experiment"].status == FAIL
    assert checks["experiment"].reason == f"no server answers at {url} (connection refused)"
    for name in ("params", "metrics", "dataset", "artifact", "model", "tracing", "prompts", "web UI"):
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
    # The store reader's one message for a dead PostgreSQL (the same as `inv inspect` prints).
    assert checks["storage"].status == FAIL and "cannot reach PostgreSQL" in checks["storage"].reason
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
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='02 broken']/failure")
    assert failure is not None
    assert failure.get("message") == "params | read back wrong"

    data = json.loads(paths["json"].read_text())
    assert data["summary"]["FAIL"] == 1 and data["summary"]["ok"] is False
    assert data["checks"][0]["latencies"][0]["over_budget"] is True

    markdown = paths["markdown"].read_text()
    assert "params \\| read back wrong" in markdown  # a pipe must not break the table
    assert "UI page 2.50 s (2 s) WARNING" in markdown
    assert "FAILED: 1 passed, 1 failed, 1 skipped" in format_table(report)


def test_deployment_task_exits_non_zero_when_a_check_fails(tmp_path, monkeypatch):
    from tasks.test import deployment

    for key in [k for k in os.environ if k.startswith("MLFLOW_OPS_")]:
        monkeypatch.delenv(key)
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    out = tmp_path / "reports"
    with pytest.raises(Exit) as exc:
        deployment(Context(), url=dead_url(), report_dir=str(out), browser="none", config=str(empty))
    assert exc.value.code == 1 and "experiment" in str(exc.value.message)
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "junit.xml"}
    storage = json.loads((out / "report.json").read_text())["checks"][10]
    assert storage["status"] == SKIPPED and "not the configured server" in storage["reason"]


def test_deployment_task_reports_an_unusable_report_dir_in_one_line(tmp_path):
    from tasks.test import deployment

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
    assert (
        describe_error(sql_error, "u") == "the server's database failed: (sqlite3.DatabaseError) file is not a database"
    )
    http_error = MlflowishError(
        "API request to http://h:1/api/2.0/mlflow-artifacts/artifacts/x failed with exception "
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded (Caused by ResponseError('too many 500 error responses'))"
    )
    assert describe_error(http_error, "u") == "the server answered HTTP 500 to /api/2.0/mlflow-artifacts/artifacts/x"


# --- storage check on files we break ourselves ------------------------------------------------


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


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
    assert "integrity ok, no orphan rows in 3 tables" in check_database(sqlite_uri(make_store(tmp_path / "ok.db")))


def test_sqlite_storage_check_finds_orphan_rows(tmp_path):
    with pytest.raises(CheckFailed, match=r"foreign key points nowhere: runs -> experiments: 1"):
        check_database(sqlite_uri(make_store(tmp_path / "orphan.db", orphan=True)))


def test_sqlite_storage_check_finds_a_corrupt_file(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(CheckFailed, match="not a database"):
        check_database(sqlite_uri(path))


def test_sqlite_storage_check_finds_a_missing_file_and_a_foreign_database(tmp_path):
    with pytest.raises(CheckFailed, match="does not exist"):
        check_database(sqlite_uri(tmp_path / "missing.db"))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(CheckFailed, match="not an MLflow store"):
        check_database(sqlite_uri(other))


def test_store_and_artifact_paths(tmp_path):
    (tmp_path / "my dir").mkdir()
    make_store(tmp_path / "my dir" / "mlflow.db")
    assert "SQLite mlflow.db: integrity ok" in check_database(f"sqlite:///{tmp_path}/my%20dir/mlflow.db?timeout=5")
    with pytest.raises(CheckSkipped, match="names no database file"):
        check_database("sqlite://")
    with pytest.raises(CheckSkipped, match="unsupported backend"):
        check_database("mysql+pymysql://u:p@127.0.0.1/db")
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
