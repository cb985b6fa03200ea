"""`inspect`: what is in the store, the same on SQLite and PostgreSQL, and never a write."""

from __future__ import annotations

import json
import uuid

import pytest
from invoke import Context
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tasks import inspect as inspect_tasks
from tasks.libs.store.inspection import SECTIONS, inspect_store
from tasks.libs.store.integrity import integrity
from tasks.libs.store.reader import open_store
from tasks.libs.store.report import render
from tests.support.store import (
    ACCURACY,
    SCRATCH_CHILD,
    SCRATCH_FK,
    SCRATCH_INDEX,
    STALE_AGE_HOURS,
    fill_store,
    inspect_error,
    orphan_artifact_folder,
    orphan_param_row,
    pg_unvalidated_key_and_invalid_index,
    store_fingerprint,
    with_password,
)

BACKENDS = ["sqlite", "postgres"]


# --- a store filled by a real server through the client (once per backend) -----------------


@pytest.fixture(scope="module", params=BACKENDS)
def filled(request):
    server = request.getfixturevalue(f"{request.param}_server")
    logged = fill_store(server.url, f"inspect-{uuid.uuid4().hex[:8]}")
    return server, logged


def full_report(server, **kwargs):
    return inspect_store(server.store_uri, server.artifacts_dir, **kwargs)


@pytest.mark.integration
def test_run_counts_match_what_was_logged(filled):
    server, logged = filled
    runs = full_report(server, sections=["runs"])["runs"]
    [exp] = [e for e in runs["by_experiment"] if str(e["experiment_id"]) == logged["experiment_id"]]
    assert (exp["total"], exp.get("FINISHED"), exp.get("FAILED"), exp.get("RUNNING")) == (3, 1, 1, 1)
    assert logged["stale"] in {r["run_id"] for r in runs["stale_running"]}
    assert logged["finished"] not in {r["run_id"] for r in runs["stale_running"]}
    assert logged["stale"] in {r["run_id"] for r in runs["without_end_time"]}
    [stale] = [r for r in runs["stale_running"] if r["run_id"] == logged["stale"]]
    assert stale["age_hours"] >= STALE_AGE_HOURS - 1


@pytest.mark.integration
def test_stale_threshold_is_respected(filled):
    server, logged = filled
    runs = full_report(server, sections=["runs"], stale_hours=STALE_AGE_HOURS + 24)["runs"]
    assert logged["stale"] not in {r["run_id"] for r in runs["stale_running"]}


@pytest.mark.integration
def test_metrics_first_last_rows_and_steps(filled):
    server, logged = filled
    metrics = full_report(server, sections=["metrics"], limit=10_000)["metrics"]
    series = {(e["run_id"], e["key"]): e for e in metrics["per_run"]}
    acc = series[(logged["finished"], "accuracy")]
    assert (acc["first"], acc["last"], acc["rows"], acc["steps"]) == (ACCURACY[0], ACCURACY[-1], 3, 3)
    assert acc["change"] == pytest.approx(ACCURACY[-1] - ACCURACY[0])
    assert series[(logged["failed"], "loss")]["rows"] == 1
    assert "accuracy" in render({"store": "s", "dialect": "d", "metrics": metrics})
    assert "70.39% -> 89.89%" in render({"store": "s", "dialect": "d", "metrics": metrics})


@pytest.mark.integration
def test_tables_schema_and_registry(filled):
    server, logged = filled
    report = full_report(server, sections=["tables", "schema", "registry"], with_schema=True)
    tables = {t["table"]: t for t in report["tables"]}
    assert len(tables) == 65 and tables["runs"]["rows"] >= 3
    assert (
        tables["metrics"]["primary_key"]
        and {"columns": ["run_uuid"], "references": "runs", "parent_columns": ["run_uuid"]}
        in tables["metrics"]["foreign_keys"]
    )
    with open_store(server.store_uri) as store:
        assert tables["metrics"]["rows"] == store.scalar("SELECT count(*) FROM metrics")
    assert report["schema"]["state"] == "up to date"
    registry = report["registry"]
    assert {"name": logged["model"], "alias": "champion", "version": logged["version"]} in registry["aliases"]
    [version] = [v for v in registry["versions"] if v["name"] == logged["model"]]
    assert version["run_id"] == logged["finished"] and version["run_exists"] is True


@pytest.mark.integration
def test_planted_orphan_row_and_artifact_folder_are_found(filled):
    server, logged = filled
    clean = full_report(server, sections=["integrity"])["integrity"]
    with (
        orphan_param_row(server.store_uri) as bogus_run,
        orphan_artifact_folder(server.artifacts_dir, logged["experiment_id"]) as folder,
    ):
        report = full_report(server, sections=["integrity", "sizes"])
    orphans = report["integrity"]["orphans"]
    [params] = [o for o in orphans if o["table"] == "params"]
    assert (params["parent"], params["columns"], params["rows"]) == ("runs", ["run_uuid"], 1)
    assert params["sample"] == [[bogus_run]]
    assert report["integrity"]["orphan_rows"] == clean["orphan_rows"] + 1
    art = report["sizes"]["artifacts"]
    assert {"path": str(folder.resolve()), "kind": "no run", "bytes": 1234, "files": 1} in art["orphan_folders"]
    assert logged["finished"] in {r["run_id"] for r in art["per_run"]}
    assert logged["failed"] in {r["run_id"] for r in art["runs_missing_folder"]}  # it logged no artifact


@pytest.mark.integration
def test_inspection_changes_nothing(filled):
    server, _ = filled
    before = store_fingerprint(server.store_uri)
    report = full_report(server, sections=SECTIONS, with_schema=True)
    render(report, "table"), render(report, "markdown"), json.loads(render(report, "json"))
    assert store_fingerprint(server.store_uri) == before


@pytest.mark.integration
def test_reader_refuses_writes(filled):
    server, _ = filled
    with open_store(server.store_uri) as store, pytest.raises(Exception, match="(?i)read.?only"):
        store.rows("DELETE FROM experiments WHERE experiment_id = -1")


@pytest.mark.integration
def test_task_prints_masked_uri_and_json(filled, capsys):
    server, _ = filled
    inspect_tasks.summary(Context(), uri=server.store_uri, artifacts=str(server.artifacts_dir), format="json")
    out = capsys.readouterr().out
    data = json.loads(out)
    assert set(SECTIONS) <= set(data)
    password = make_url(server.store_uri).password
    if password:
        assert password not in out and ":***@" in data["store"]


# --- error paths: one clear line, non-zero exit ---------------------------------------


@pytest.mark.integration
def test_wrong_password_is_one_line(postgres_server):
    uri = with_password(postgres_server.store_uri, "wrong-password")
    message = inspect_error(uri)
    assert "refused the password" in message and "wrong-password" not in message


# --- schema revision and SQLite read-only mechanics (a store made without a server) ---------


# --- PostgreSQL: one read-only snapshot; what only the catalog knows ---------------------


@pytest.mark.integration
def test_postgres_reader_is_one_read_only_snapshot_that_survives_a_failed_section(postgres_server):
    with open_store(postgres_server.store_uri) as store:
        settings = {
            name: store.scalar(f"SHOW {name}")
            for name in ("transaction_read_only", "transaction_isolation", "application_name", "lock_timeout")
        }
        assert settings == {
            "transaction_read_only": "on",
            "transaction_isolation": "repeatable read",
            "application_name": "mlflow-ops inspect",
            "lock_timeout": "10s",
        }
        started = store.scalar("SELECT now()")  # the transaction's start time
        with pytest.raises(SQLAlchemyError, match="no_such_table"), store.section():
            store.rows("SELECT * FROM no_such_table WHERE id = :id", {"id": 1})
        assert store.scalar("SELECT count(*) FROM experiments") >= 1
        assert store.scalar("SELECT now()") == started


@pytest.mark.integration
def test_postgres_integrity_lists_unvalidated_keys_and_invalid_indexes(postgres_server):
    uri = postgres_server.store_uri
    with open_store(uri) as store:
        clean = integrity(store)
    assert clean["unvalidated_foreign_keys"] == [] and clean["invalid_indexes"] == []
    with pg_unvalidated_key_and_invalid_index(uri), open_store(uri) as store:
        found = integrity(store)
    with open_store(uri) as store:
        assert SCRATCH_CHILD not in store.tables()  # dropped again
    assert found["unvalidated_foreign_keys"] == [f"{SCRATCH_FK} ({SCRATCH_CHILD})"]
    assert found["invalid_indexes"] == [f"{SCRATCH_INDEX} ({SCRATCH_CHILD})"]
    [orphan] = [o for o in found["orphans"] if o["table"] == SCRATCH_CHILD]
    assert (orphan["name"], orphan["columns"], orphan["rows"], orphan["sample"]) == (
        SCRATCH_FK,
        ["parent_id"],
        1,
        [[42]],
    )
    shown = render({"store": "s", "dialect": "postgresql", "integrity": found})
    assert f"foreign keys not validated: {SCRATCH_FK}" in shown and f"invalid indexes: {SCRATCH_INDEX}" in shown
