"""`inspect`: what is in the store, the same on SQLite and PostgreSQL, and never a write."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks import inspect as inspect_tasks
from tasks.libs.core.databases import sqlite_journal_mode
from tasks.libs.core.processes import free_port
from tasks.libs.store.inspection import inspect_store, schema_revision
from tasks.libs.store.integrity import integrity
from tasks.libs.store.reader import open_store
from tasks.libs.store.report import render
from tests.support.store import inspect_error

BACKENDS = ["sqlite", "postgres"]


# --- a store filled by a real server through the client (once per backend) -----------------


def test_missing_file_is_an_error_not_a_new_database(tmp_path):
    missing = tmp_path / "nope.db"
    assert "does not exist" in inspect_error(f"sqlite:///{missing}")
    assert not missing.exists()


def test_text_file_is_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("just text, not sqlite\n" * 10)
    assert "not an SQLite database" in inspect_error(f"sqlite:///{path}")


def test_empty_database_and_foreign_sqlite_file(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    assert "empty database" in inspect_error(f"sqlite:///{empty}")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (a)")
    assert "not an MLflow store" in inspect_error(f"sqlite:///{other}")


def test_unreachable_postgres_and_bad_scheme():
    message = inspect_error(f"postgresql+psycopg2://mlflow_user:s3cret@127.0.0.1:{free_port()}/mlflow")
    assert "cannot reach PostgreSQL" in message and "s3cret" not in message
    assert "unsupported backend" in inspect_error("mysql+pymysql://u:s3cret@127.0.0.1/db")


@pytest.fixture(scope="module")
def mlflow_sqlite_file(tmp_path_factory):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "artifacts"))
    store.engine.dispose()
    return path


def _copy_with_revision(src: Path, dst: Path, revision: str) -> str:
    shutil.copy(src, dst)
    with sqlite3.connect(dst) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    return f"sqlite:///{dst}"


def test_schema_revision_states(mlflow_sqlite_file, tmp_path):
    older = _copy_with_revision(mlflow_sqlite_file, tmp_path / "old.db", "0a8213491aaa")  # an early migration
    with open_store(older) as store:
        info = schema_revision(store)
    assert info["state"] == "needs upgrade" and info["behind"] > 0 and "mlflow db upgrade" in info["advice"]
    newer = _copy_with_revision(mlflow_sqlite_file, tmp_path / "new.db", "ffffffffffff")
    with open_store(newer) as store:
        assert schema_revision(store)["state"] == "newer than installed MLflow"


def test_wal_file_read_without_leaving_side_files(mlflow_sqlite_file, tmp_path):
    path = tmp_path / "wal.db"
    shutil.copy(mlflow_sqlite_file, path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    digest = path.read_bytes()
    report = inspect_store(f"sqlite:///{path}", tmp_path / "artifacts")
    assert report["sizes"]["journal_mode"] == "wal" and report["schema"]["state"] == "up to date"
    assert sorted(p.name for p in tmp_path.iterdir()) == before and path.read_bytes() == digest


def test_every_format_renders_an_empty_store(mlflow_sqlite_file):
    report = inspect_store(f"sqlite:///{mlflow_sqlite_file}", None, with_schema=True)
    assert "== integrity ==" in render(report, "table")
    assert "## runs" in render(report, "markdown")
    assert json.loads(render(report, "json"))["integrity"]["integrity_check"] == "ok"


def test_unreadable_section_is_reported_and_the_rest_still_shown(mlflow_sqlite_file, tmp_path, capsys):
    path = tmp_path / "damaged.db"
    shutil.copy(mlflow_sqlite_file, path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE registered_model_aliases")  # as if written by an MLflow without aliases
    conn.close()
    report = inspect_store(f"sqlite:///{path}", None, sections=["registry", "runs"])
    assert "no such table" in report["registry"]["error"] and report["runs"]["total"] == 0
    with pytest.raises(Exit) as exc:
        inspect_tasks.summary(Context(), uri=f"sqlite:///{path}")
    assert exc.value.code == 1 and "registry" in str(exc.value.message)
    assert "== runs ==" in capsys.readouterr().out


def test_integrity_follows_keys_that_name_no_parent_columns_and_dropped_parents(tmp_path):
    path = tmp_path / "keys.db"
    with sqlite3.connect(path) as conn:  # foreign_keys is off here: the damage goes in unchecked
        conn.executescript(
            """
            CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY);
            CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY);
            CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, experiment_id INTEGER REFERENCES experiments);
            CREATE TABLE gone (id INTEGER PRIMARY KEY);
            CREATE TABLE tags (run_uuid TEXT REFERENCES runs, gone_id INTEGER REFERENCES gone);
            INSERT INTO experiments VALUES (1);
            INSERT INTO runs VALUES ('r1', 1), ('r2', 7), ('r3', NULL);
            INSERT INTO tags VALUES ('r1', 5), ('nope', NULL);
            DROP TABLE gone;
            """
        )
    conn.close()
    with open_store(f"sqlite:///{path}") as store:
        found = integrity(store)
    orphans = {(o["table"], o["parent"]): (o["parent_columns"], o["rows"], o["sample"]) for o in found["orphans"]}
    assert orphans == {
        ("runs", "experiments"): (["experiment_id"], 1, [[7]]),  # the parent's primary key, resolved
        ("tags", "runs"): (["run_uuid"], 1, [["nope"]]),
        ("tags", "gone"): ([], 1, [[5]]),  # no parent table: every keyed row is an orphan
    }
    assert (found["relationships_checked"], found["orphan_rows"], found["integrity_check"]) == (3, 3, "ok")
    assert found["unvalidated_foreign_keys"] is None and found["invalid_indexes"] is None


def test_journal_mode_comes_from_the_file_header(tmp_path):
    path = tmp_path / "journal.db"
    assert sqlite_journal_mode(path) == "no file"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    assert sqlite_journal_mode(path) == "rollback"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    assert sqlite_journal_mode(path) == "wal"
    assert [p.name for p in tmp_path.iterdir()] == ["journal.db"]  # reading the mode left no side files
