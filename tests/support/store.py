"""Helpers for tests/test_inspect.py: fill a live server, plant damage, fingerprint a store."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit
from sqlalchemy.engine import make_url

from tasks import inspect as inspect_tasks

ACCURACY = [0.7039, 0.8123, 0.8989]
LOSS = [1.25, 0.61, 0.33]
STALE_AGE_HOURS = 48


def fill_store(server_url: str, experiment_name: str) -> dict:
    """Log a known set of runs through the client; return what was logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server_url, registry_uri=server_url)
    exp_id = client.create_experiment(experiment_name)
    finished = client.create_run(exp_id, run_name="trained")
    run_id = finished.info.run_id
    for step, (acc, loss) in enumerate(zip(ACCURACY, LOSS, strict=True)):
        client.log_metric(run_id, "accuracy", acc, step=step)
        client.log_metric(run_id, "loss", loss, step=step)
    client.log_param(run_id, "alpha", "0.5")
    client.log_text(run_id, "hello artifacts", "notes/readme.txt")
    client.set_terminated(run_id, "FINISHED")

    failed = client.create_run(exp_id, run_name="broken").info.run_id
    client.log_metric(failed, "loss", 9.0, step=0)
    client.set_terminated(failed, "FAILED")

    # A client that crashed two days ago: RUNNING, never ended.
    stale_start = int((time.time() - STALE_AGE_HOURS * 3600) * 1000)
    stale = client.create_run(exp_id, start_time=stale_start, run_name="crashed").info.run_id

    model = f"inspect-model-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(model)
    version = client.create_model_version(model, source=f"{finished.info.artifact_uri}/notes", run_id=run_id)
    client.set_registered_model_alias(model, "champion", version.version)
    return {
        "experiment_id": exp_id,
        "finished": run_id,
        "failed": failed,
        "stale": stale,
        "model": model,
        "version": int(version.version),
    }


@contextlib.contextmanager
def orphan_param_row(store_uri: str) -> Iterator[str]:
    """A params row whose run does not exist (FK checks bypassed), removed afterwards."""
    bogus_run = uuid.uuid4().hex
    url = make_url(store_uri)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), timeout=30)  # foreign_keys is off on a fresh connection
        with conn:
            conn.execute("INSERT INTO params (key, value, run_uuid) VALUES ('orphan', 'x', ?)", (bogus_run,))
        try:
            yield bogus_run
        finally:
            with conn:
                conn.execute("DELETE FROM params WHERE run_uuid = ?", (bogus_run,))
            conn.close()
        return
    conn = _pg_connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")  # skips FK triggers (superuser only)
        cur.execute("INSERT INTO params (key, value, run_uuid) VALUES ('orphan', 'x', %s)", (bogus_run,))
    try:
        yield bogus_run
    finally:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM params WHERE run_uuid = %s", (bogus_run,))
        conn.close()


SCRATCH_PARENT, SCRATCH_CHILD = "mlflow_ops_scratch_parent", "mlflow_ops_scratch_child"
SCRATCH_FK, SCRATCH_INDEX = "mlflow_ops_scratch_fk", "mlflow_ops_scratch_note"


@contextlib.contextmanager
def pg_unvalidated_key_and_invalid_index(store_uri: str) -> Iterator[None]:
    """A scratch table pair in the store's schema: an orphan row under a NOT VALID foreign key,
    and a unique index left INVALID by a CREATE INDEX CONCURRENTLY that failed; dropped afterwards."""
    import psycopg2

    conn = _pg_connect(make_url(store_uri))
    conn.autocommit = True  # CREATE INDEX CONCURRENTLY refuses to run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {SCRATCH_PARENT} (id int PRIMARY KEY)")
            cur.execute(f"CREATE TABLE {SCRATCH_CHILD} (id int PRIMARY KEY, parent_id int, note text)")
            cur.execute(f"INSERT INTO {SCRATCH_CHILD} VALUES (1, 42, 'twice'), (2, NULL, 'twice')")
            cur.execute(
                f"ALTER TABLE {SCRATCH_CHILD} ADD CONSTRAINT {SCRATCH_FK} "
                f"FOREIGN KEY (parent_id) REFERENCES {SCRATCH_PARENT} NOT VALID"
            )
            with pytest.raises(psycopg2.errors.UniqueViolation):
                cur.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {SCRATCH_INDEX} ON {SCRATCH_CHILD} (note)")
        yield
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {SCRATCH_CHILD}, {SCRATCH_PARENT}")
        conn.close()


@contextlib.contextmanager
def orphan_artifact_folder(artifacts_dir: Path, experiment_id: str) -> Iterator[Path]:
    folder = Path(artifacts_dir) / str(experiment_id) / uuid.uuid4().hex
    (folder / "artifacts").mkdir(parents=True)
    (folder / "artifacts" / "left-behind.bin").write_bytes(b"x" * 1234)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def store_fingerprint(store_uri: str) -> dict:
    """SQLite: the bytes of the file and its WAL, which side files exist; Postgres: rows per table.

    The -shm file is only compared for existence: it is the WAL's shared-memory index, where
    every reader (ours included) must record a read mark; it holds no data.
    """
    url = make_url(store_uri)
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        found: dict = {}
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
            found[candidate.name] = hashlib.sha256(candidate.read_bytes()).hexdigest() if candidate.exists() else None
        found["shm exists"] = Path(f"{path}-shm").exists()
        return found
    conn = _pg_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
            tables = [r[0] for r in cur.fetchall()]
            counts = {}
            for table in tables:
                cur.execute(f'SELECT count(*) FROM "{table}"')
                counts[table] = cur.fetchone()[0]
            return {"rows": counts}
    finally:
        conn.close()


def _pg_connect(url):
    import psycopg2

    return psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database)


def with_password(store_uri: str, password: str) -> str:
    return make_url(store_uri).set(password=password).render_as_string(hide_password=False)


def inspect_error(uri: str) -> str:
    """The one-line message `inv inspect.tables --uri URI` exits with (it must exit 1)."""
    with pytest.raises(Exit) as exc:
        inspect_tasks.tables(Context(), uri=uri)
    assert exc.value.code == 1
    message = str(exc.value.message)
    assert "\n" not in message and "Traceback" not in message
    return message
