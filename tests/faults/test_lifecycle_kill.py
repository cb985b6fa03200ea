"""The tool SIGKILLed (its whole process group) mid-restore, mid-migrate and mid-upgrade, on both backends.

Each test runs the real CLI, kills it at a moment it can see (a COPY in pg_stat_activity, a
migration holding an ACCESS EXCLUSIVE lock, the upgraded copy's revision moving, or the
journal's step for a moment too short to hit by timing), then checks that the store being
replaced or read is unchanged, and that the next run says what happened and finishes the job.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.databases import sqlite_readonly
from tasks.libs.core.settings import PROJECT_ROOT, Settings
from tasks.libs.core.waits import wait_until
from tasks.libs.lifecycle.backup import take_backup
from tasks.libs.lifecycle.internals.manifest import verify_files
from tasks.libs.lifecycle.internals.pgtools import table_counts
from tasks.libs.lifecycle.internals.runtime import installed
from tasks.libs.postgres.connection import pg_connection
from tests.support.cli import hermetic_env, inv
from tests.support.lifecycle import (
    OLD_REVISION,
    RUN_IDS,
    bulk_metrics,
    counts_and_revision,
    drop,
    head_store,
    old_store,
    pg_on,
    sessions_gone,
    sha256,
    sqlite_in,
)
from tests.support.settings import PG_PASSWORD, make_state_dir

HEAD = installed().head


@pytest.fixture
def state():
    path = make_state_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(state: Path, pg: Settings | None = None) -> dict[str, str]:
    values = {}
    if pg is not None:
        values = {
            "postgres__port": str(pg.postgres.port),
            "postgres__password": PG_PASSWORD,
            "postgres__database": pg.postgres.database,
        }
    return hermetic_env(state, **values)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The CLI in a session of its own: killing its group kills every child (pg_restore, mlflow) too."""
    out = open(log, "w")  # noqa: SIM115 - closed when the process is reaped
    return subprocess.Popen(
        [sys.executable, *args], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _kill_when(proc: subprocess.Popen, condition, what: str, timeout: float = 180) -> None:
    seen = wait_until(lambda: proc.poll() is not None or condition(), timeout=timeout, interval=0.01)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen and alive, f"the tool ended (rc {proc.returncode}) before {what}"
    wait_until(lambda: not any(_in_group(p, proc.pid) for p in psutil.process_iter()), timeout=10)


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid
    except (ProcessLookupError, PermissionError):
        return False


def _pg_sees(settings: Settings, sql: str) -> bool:
    with pg_connection(settings, dbname="postgres") as conn, conn.cursor() as cur:
        cur.execute(sql, (settings.postgres.database,))
        return cur.fetchone()[0] > 0


def _note(output: str, operation: str, step: str) -> None:
    assert f"NOTE: `db.{operation}`" in output and f"was killed during '{step}'" in output, output


def test_sigkill_mid_sqlite_restore_keeps_the_old_store_whole_and_the_next_run_finishes(state):
    settings = sqlite_in(state)
    head_store(settings.sqlite_file, runs=1, metrics=5)
    backup = take_backup(settings)
    with sqlite3.connect(settings.sqlite_file) as conn:  # the store moves on after the backup
        conn.execute("DELETE FROM metrics WHERE step > 2")
    old = sha256(settings.sqlite_file)
    env = _env(state)
    step = "put the restored copy in place"
    proc = _start(
        ["-m", "tests.support.pause_at", step, "--", "db.restore", "--backend", "sqlite", "--force"],
        env,
        state / "killed.log",
    )
    _kill_when(proc, lambda: "PAUSED" in (state / "killed.log").read_text(), "the swap")
    [kept] = list(state.glob("mlflow.db.replaced-*"))
    assert sha256(kept / "mlflow.db") == old  # the old store is whole, beside the missing target
    assert not settings.sqlite_file.exists() and verify_files(backup.folder, backup.manifest) == []

    again = inv("db.restore", "--backend", "sqlite", "--force", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    _note(again.stdout, "restore", step)
    assert str(kept) in again.stdout  # where the old store is
    assert counts_and_revision(settings)[0] == backup.manifest.row_counts
    assert sha256(kept / "mlflow.db") == old


def test_sigkill_mid_pg_restore_leaves_the_database_as_it_was_and_the_next_run_finishes(state, pg_settings):
    pg = pg_on(pg_settings, state, f"kill_restore_{state.name[-8:].lower()}")
    try:
        old_store(backend_store_uri(pg, reveal=True), metrics=10)
        bulk_metrics(backend_store_uri(pg, reveal=True), RUN_IDS[0], 100_000)
        backup = take_backup(pg)
        with pg_connection(pg) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM metrics WHERE step > 90000")
        before = counts_and_revision(pg)
        env = _env(state, pg)
        proc = _start(["-m", "invoke", "db.restore", "--backend", "postgres", "--force"], env, state / "killed.log")
        copying = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'psql' AND query LIKE 'COPY%%'"
        _kill_when(proc, lambda: _pg_sees(pg, copying), "its COPY of the metrics")
        assert sessions_gone(pg, pg.postgres.database)
        assert counts_and_revision(pg) == before  # one transaction: rolled back whole

        again = inv("db.restore", "--backend", "postgres", "--force", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        _note(again.stdout, "restore", "drop the old tables + pg_restore, in one psql --single-transaction")
        assert "still holds what it held before" in again.stdout
        assert counts_and_revision(pg)[0] == backup.manifest.row_counts
    finally:
        drop(pg)


def test_sigkill_mid_migrate_leaves_the_target_empty_and_the_source_byte_identical(state, pg_settings):
    pg = pg_on(pg_settings, state, f"kill_migrate_{state.name[-8:].lower()}")
    try:
        made = head_store(sqlite_in(state).sqlite_file, runs=1, metrics=5)
        source = state / "mlflow.db"
        bulk_metrics(f"sqlite:///{source}", made["runs"][0], 100_000)
        before = sha256(source)
        env = _env(state, pg)
        proc = _start(["-m", "invoke", "db.migrate", "--no-server-checks"], env, state / "killed.log")
        copying = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'COPY \"metrics\"%%'"
        _kill_when(proc, lambda: _pg_sees(pg, copying), "its COPY of the metrics")
        assert sha256(source) == before
        assert sessions_gone(pg, pg.postgres.database)
        assert {t: n for t, n in table_counts(pg).items() if n} == {"alembic_version": 1, "workspaces": 1}

        again = inv("db.migrate", "--no-server-checks", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        _note(again.stdout, "migrate", "copy every table in one transaction (COPY, foreign-key order)")
        assert "PostgreSQL rolls the open transaction back" in again.stdout
        assert table_counts(pg)["metrics"] == 100_000 + 2 * 7  # bulk + (5 loss, nan, inf) of each of 2 runs
        assert sha256(source) == before
    finally:
        drop(pg)


def test_sigkill_mid_sqlite_upgrade_leaves_the_store_byte_identical_and_the_next_run_finishes(state):
    settings = sqlite_in(state)
    old_store(backend_store_uri(settings), metrics=50)
    take_backup(settings)
    before = sha256(settings.sqlite_file)
    copy = state / "mlflow.db.upgrading"
    env = _env(state)
    proc = _start(["-m", "invoke", "db.upgrade", "--backend", "sqlite", "--apply"], env, state / "killed.log")
    _kill_when(proc, lambda: _revision(copy) not in (None, OLD_REVISION), "a migration of the copy committed")
    assert sha256(settings.sqlite_file) == before
    assert counts_and_revision(settings)[1] == [OLD_REVISION]

    again = inv("db.upgrade", "--backend", "sqlite", "--apply", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    _note(again.stdout, "upgrade", "mlflow db upgrade of the copy (MLflow 3.17.2)")
    assert "is untouched" in again.stdout
    assert counts_and_revision(settings)[1] == [HEAD]


def test_sigkill_mid_postgres_upgrade_leaves_revision_and_rows_and_the_next_run_finishes(state, pg_settings):
    pg = pg_on(pg_settings, state, f"kill_upgrade_{state.name[-8:].lower()}")
    try:
        old_store(backend_store_uri(pg, reveal=True), metrics=50)
        take_backup(pg)
        before = counts_and_revision(pg)
        env = _env(state, pg)
        proc = _start(["-m", "invoke", "db.upgrade", "--backend", "postgres", "--apply"], env, state / "killed.log")
        migrating = (
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.datname = %s AND l.mode = 'AccessExclusiveLock' AND l.granted"
        )
        _kill_when(proc, lambda: _pg_sees(pg, migrating), "a migration took its lock")
        assert sessions_gone(pg, pg.postgres.database)
        assert counts_and_revision(pg) == before

        again = inv("db.upgrade", "--backend", "postgres", "--apply", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        _note(again.stdout, "upgrade", "mlflow db upgrade in one transaction (MLflow 3.17.2)")
        assert counts_and_revision(pg)[1] == [HEAD]
    finally:
        drop(pg)


def _revision(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        with sqlite_readonly(path, timeout=0.05) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None
