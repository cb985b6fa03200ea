"""`db.migrate`: copy a SQLite store into PostgreSQL keeping every ID, in one transaction, then prove it.

1. The source is read once, through SQLite's backup API, into a snapshot in the state dir;
   everything after reads the snapshot (the source file is never opened for writing).
2. The snapshot must be at the installed MLflow's head ("upgrade a copy first"); the target
   must be empty or look like a fresh store; its schema is made by `mlflow db upgrade` of the
   same MLflow, never by the copy, and the two revisions must be equal.
3. Prescan: every value PostgreSQL would refuse is listed before anything is written.
4. One transaction: the fresh store's seed rows go, every table is COPYed in foreign-key order,
   artifact roots are rewritten if asked, every owned sequence is set to max(column).
   A kill at any point leaves the target as it was (PostgreSQL rolls the transaction back).
5. Verify: rows (count + content hash per table), MLflow's store API on both sides, and the
   deployment checks against a server on a copy of the new store.
PostgreSQL -> SQLite is not offered.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from tasks.libs.core.credentials import backend_store_uri, store_uri_and_password_env
from tasks.libs.core.databases import engine_for, sqlite_readonly
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.lifecycle.internals.journal import Journal, StepTable
from tasks.libs.lifecycle.internals.migrate_verify import compare_api, compare_rows
from tasks.libs.lifecycle.internals.pgtools import table_counts, with_database
from tasks.libs.lifecycle.internals.root_rewrite import artifact_roots, rewrite_artifact_root, rewritten_columns
from tasks.libs.lifecycle.internals.runtime import db_upgrade, installed
from tasks.libs.lifecycle.internals.scratch import checks_summary, deployment_checks, scratch_dir, store_settings
from tasks.libs.lifecycle.internals.sqlite_files import online_copy
from tasks.libs.lifecycle.internals.table_copy import SKIP_TABLES, Plan, copy_tables, make_plan, reset_sequences
from tasks.libs.postgres.connection import (
    check_reachable,
    create_database,
    database_exists,
    drop_database,
    ensure_database,
)
from tasks.libs.reporting.formats import human_bytes
from tasks.libs.reporting.records import Report
from tasks.libs.server.control import running_record
from tasks.libs.store.revisions import preflight, stored_revisions

# What `mlflow db upgrade` of an empty database inserts (workspaces 'default'), and what a
# server's first start adds (the Default experiment 0): a target holding only these is empty.
SEED_ROWS = {"workspaces": 1, "experiments": 1}


@dataclass
class MigrateResult:
    source: str
    target: str
    steps: StepTable
    dry_run: bool
    plan: Plan | None = None
    roots: dict[str, int] = field(default_factory=dict)
    rewrite: dict[str, int] | None = None
    sequences: list[tuple[str, str, int | None]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    compared: str = ""
    checks: Report | None = None


def migrate(
    sqlite_settings: Settings,
    pg_settings: Settings,
    *,
    source: Path | None,
    dry_run: bool,
    rewrite: tuple[str, str] | None,
    server_checks: bool,
    say: Callable[[str], None] = print,
) -> MigrateResult:
    source = (source or sqlite_settings.sqlite_file).resolve()
    if not source.is_file():
        raise UserError(f"no SQLite store at {source}; give --source PATH")
    server = running_record(pg_settings)
    if server:
        raise UserError(
            f"the MLflow server (pid {server.pid}, {server.backend}) is running; `inv server.stop` first: "
            "the copy is a snapshot, and what is written after it would not reach the new store"
        )
    problem = (
        check_reachable(pg_settings, dbname="postgres")
        if pg_settings.postgres.provider != "external"
        else check_reachable(pg_settings)
    )
    if problem:
        raise UserError(f"PostgreSQL is not usable ({problem}); `inv db.start` first")
    target_name = backend_store_uri(pg_settings)
    result = MigrateResult(str(source), target_name, StepTable(say=say), dry_run)
    steps = result.steps
    work = scratch_dir(pg_settings, "migrate")
    snap = work / "source.db"
    runtime = installed()
    with steps.step("snapshot the source (SQLite backup API, read-only)") as row:
        online_copy(source, snap)
        row.detail = human_bytes(snap.stat().st_size)
    snap_uri = f"sqlite:///{snap}"
    with engine_for(snap_uri) as engine:
        found = preflight(
            sa.inspect(engine).get_table_names(),
            stored_revisions(engine),
            head=runtime.head,
            known=runtime.revisions,
            mlflow_version=runtime.version,
        )
    if found.state != "head":
        raise UserError(
            f"the source is {found.describe()}: upgrade a copy first (`inv db.backup --backend sqlite`, then "
            "`inv db.upgrade --backend sqlite --apply`), then migrate"
        )
    exists = (
        database_exists(pg_settings, _database(pg_settings)) if pg_settings.postgres.provider != "external" else True
    )
    counts = table_counts(pg_settings) if exists else {}
    _refuse_filled(pg_settings, counts, runtime.head)
    uri, env = store_uri_and_password_env(pg_settings)
    full_uri = backend_store_uri(pg_settings, reveal=True)
    if not counts:
        if dry_run:
            steps.skip("target schema (mlflow db upgrade)", "dry run: the target stays empty")
        else:
            with steps.step(f"target schema: mlflow db upgrade (MLflow {runtime.version})"):
                if not exists:
                    ensure_database(pg_settings)
                db_upgrade(runtime, uri, settings=pg_settings, env=env)
            _refuse_filled(pg_settings, table_counts(pg_settings), runtime.head)
    schema_uri = full_uri if (counts or not dry_run) else snap_uri  # same head: the source declares the same types
    with steps.step("plan + prescan (values PostgreSQL would refuse)") as row:
        result.plan = _plan(snap, schema_uri)
        row.detail = f"{result.plan.total_rows} rows in {len(result.plan.tables)} tables"
        if result.plan.problems:
            row.status = "FAIL"
    with engine_for(snap_uri) as engine, engine.connect() as conn:
        result.roots = artifact_roots(conn)
        if rewrite:
            result.rewrite = rewrite_artifact_root(conn, *rewrite, dry_run=True)
    if result.plan.problems:
        result.problems = result.plan.problems
        return result
    if dry_run:
        return result
    with Journal(pg_settings, "migrate", "postgres", target_name) as journal:
        steps.journal = journal
        _copy(pg_settings, full_uri, snap, result, rewrite, steps)
    _verify(pg_settings, snap_uri, full_uri, result, server_checks, work)
    if not result.problems:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _database(settings: Settings) -> str:
    return sa.engine.make_url(backend_store_uri(settings)).database or ""


def _refuse_filled(settings: Settings, counts: dict[str, int], head: str) -> None:
    if not counts:
        return
    filled = {t: n for t, n in sorted(counts.items()) if t not in SKIP_TABLES and n > SEED_ROWS.get(t, 0)}
    if filled:
        shown = ", ".join(f"{t}={n}" for t, n in list(filled.items())[:6])
        raise UserError(
            f"the target database {_database(settings)} already holds data ({shown}); refusing to copy into a partly "
            "filled store: empty it first (`inv db.reset`), or point postgres.database at an empty one"
        )
    with engine_for(backend_store_uri(settings, reveal=True)) as engine, engine.connect() as conn:
        revision = stored_revisions(conn)
        seeds = conn.execute(sa.text("SELECT experiment_id, name FROM experiments")).all()
    if any(tuple(row) != (0, "Default") for row in seeds):
        raise UserError(
            f"the target database {_database(settings)} holds experiment {tuple(seeds[0])}; empty it first (`inv db.reset`)"
        )
    if revision != [head]:
        raise UserError(
            f"the target database is at revision {revision}, the source at {head}; empty it first (`inv db.reset`)"
        )


def _plan(snapshot_file: Path, schema_uri: str) -> Plan:
    with engine_for(f"sqlite:///{snapshot_file}") as src, engine_for(schema_uri) as dst:
        source_meta, target_meta = sa.MetaData(), sa.MetaData()
        source_meta.reflect(src)
        target_meta.reflect(dst)
    with sqlite_readonly(snapshot_file) as source:
        return make_plan(source, source_meta, target_meta)


def _copy(settings: Settings, uri: str, snap: Path, result: MigrateResult, rewrite, steps: StepTable) -> None:
    assert result.plan is not None
    with (
        sqlite_readonly(snap) as source,
        engine_for(uri) as engine,
        steps.step(
            "copy every table in one transaction (COPY, foreign-key order)",
            if_interrupted="PostgreSQL rolls the open transaction back: the target holds the empty schema it had; the source was only read; run `inv db.migrate` again",
        ) as row,
        engine.begin() as conn,
    ):
        conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        conn.execute(sa.text("DELETE FROM experiments"))  # the seed rows (checked above): the source has its own
        conn.execute(sa.text("DELETE FROM workspaces"))
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        seconds = copy_tables(result.plan, source, cursor, batch=settings.lifecycle.migrate_batch_rows)
        slowest = max(seconds, key=lambda t: seconds[t]) if seconds else "-"
        if rewrite:
            done = rewrite_artifact_root(conn, *rewrite, dry_run=False)
            if done != result.rewrite:
                raise UserError(f"the artifact-root rewrite changed {done}, the dry run counted {result.rewrite}")
        result.sequences = reset_sequences(cursor)
        row.detail = f"{result.plan.total_rows} rows; slowest {slowest} {seconds.get(slowest, 0):.1f} s; {len(result.sequences)} sequences set"


def _verify(
    pg_settings: Settings, snap_uri: str, uri: str, result: MigrateResult, server_checks: bool, work: Path
) -> None:
    steps = result.steps
    skip = rewritten_columns(result.rewrite or {})
    with steps.step("verify rows: count + content hash of every table") as row:
        problems, rows = compare_rows(snap_uri, uri, skip_columns=skip)
        result.problems += problems
        row.status, row.detail = ("FAIL", problems[0]) if problems else ("ok", f"{rows} rows equal")
    with steps.step("verify through MLflow's store API") as row:
        problems, result.compared = compare_api(
            snap_uri, uri, work / "api", max_runs=pg_settings.lifecycle.verify_runs, skip_uris=bool(skip)
        )
        result.problems += problems
        row.status, row.detail = ("FAIL", problems[0]) if problems else ("ok", result.compared)
    if not server_checks:
        steps.skip("deployment checks on a copy of the new store", "--no-server-checks")
        return
    if result.problems:
        steps.skip("deployment checks on a copy of the new store", "the copy already differs")
        return
    copy_name = f"{_database(pg_settings)}_migrate_check"
    with steps.step("deployment checks on a copy of the new store (no web UI)") as row:
        try:
            create_database(pg_settings, copy_name, template=_database(pg_settings), replace=True)
        except UserError as exc:
            row.status, row.detail = "skipped", f"cannot copy the database for the checks ({exc})"
            return
        try:
            on_copy = store_settings(with_database(pg_settings, copy_name), state_dir=work / "server")
            result.checks = deployment_checks(on_copy, work / "checks")
        finally:
            drop_database(pg_settings, copy_name)
        row.detail = checks_summary(result.checks)
        if result.checks.failed:
            row.status = "FAIL"
            result.problems.append(f"deployment checks: {row.detail}")
