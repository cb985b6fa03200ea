"""`db.upgrade` (the default): rehearse the upgrade on a restored copy of the latest backup.

The latest backup of this store's revision (one is taken when there is none) is restored
into a scratch SQLite file or a `<db>_rehearsal` database; `mlflow db upgrade` of the chosen
MLflow (installed, or `--to VERSION` in a private venv) runs there; then: the revision is the
head; every row of the tracking and registry tables is unchanged (the keys of the trace
tables, which migrations rewrite on purpose); the schema equals that of a fresh store made by
the same MLflow in the same dialect; the auth database is rehearsed too when auth is on; and
the deployment checks pass against a server on the upgraded copy. The store is only read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.libs.core.credentials import backend_store_uri, store_uri_and_password_env
from tasks.libs.core.databases import engine_for
from tasks.libs.core.settings import Settings
from tasks.libs.lifecycle.backup import take_backup
from tasks.libs.lifecycle.internals.journal import StepTable
from tasks.libs.lifecycle.internals.manifest import STORE_FILES, Manifest, checked, latest_backup
from tasks.libs.lifecycle.internals.pgtools import PgClient, with_database
from tasks.libs.lifecycle.internals.runtime import Runtime, auth_db_upgrade, db_upgrade, installed, start_fresh_store
from tasks.libs.lifecycle.internals.schema_compare import diff, fingerprint
from tasks.libs.lifecycle.internals.scratch import checks_summary, deployment_checks, scratch_dir, store_settings
from tasks.libs.lifecycle.internals.snapshot import AUTH_TABLES, compare, same_columns, snapshot, upgrade_tables
from tasks.libs.lifecycle.internals.sqlite_files import copy_file_synced
from tasks.libs.lifecycle.upgrade import check_store, rehearsal_record
from tasks.libs.postgres.connection import create_database, drop_database
from tasks.libs.reporting.records import Report
from tasks.libs.store.revisions import AUTH_VERSION_TABLE, Preflight, stored_revisions


@dataclass
class RehearsalResult:
    preflight: Preflight
    runtime: Runtime
    steps: StepTable
    backup: str = ""
    problems: list[str] = field(default_factory=list)
    rows_checked: dict[str, int] = field(default_factory=dict)
    checks: Report | None = None
    scratch: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.steps.failed


def rehearsal_database(settings: Settings) -> str:
    return settings.lifecycle.rehearsal_database or f"{settings.postgres.database}_rehearsal"


def rehearse(
    settings: Settings, runtime: Runtime, *, server_checks: bool, say: Callable[[str], None] = print
) -> RehearsalResult:
    found = check_store(settings, runtime)
    result = RehearsalResult(found, runtime, StepTable(say=say))
    if found.state == "head":
        return result
    steps = result.steps
    backup = _backup_of(settings, found, steps)
    result.backup = str(backup)
    work = scratch_dir(settings, f"rehearsal-{settings.backend}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    result.scratch = str(work)
    target, fresh = _scratch_stores(settings, work)
    try:
        with steps.step("restore the backup into a scratch store") as row:
            _restore_scratch(settings, backup, target, fresh)
            row.detail = target.shown
        with engine_for(target.uri) as engine:
            with steps.step("snapshot the rows (tracking, registry; trace keys)") as row:
                before = snapshot(engine, upgrade_tables())
                result.rows_checked = {t: s.count for t, s in before.items()}
                row.detail = f"{sum(result.rows_checked.values())} rows in {len(before)} tables"
            # The fresh store for the schema comparison is built meanwhile: two children, one wait.
            fresh_child = start_fresh_store(runtime, fresh.child[0], settings=settings, env=fresh.child[1])
            try:
                with steps.step(f"mlflow db upgrade (MLflow {runtime.version})") as row:
                    db_upgrade(runtime, target.child[0], settings=settings, env=target.child[1])
                    row.detail = f"{found.stored} -> {runtime.head}"
            except BaseException:
                fresh_child.proc.kill()
                fresh_child.proc.wait()
                raise
            with steps.step(f"fresh store by MLflow {runtime.version}, same dialect (built alongside)"):
                fresh_child.finish()
            with steps.step("revision is the head") as row:
                revision = stored_revisions(engine)
                row.detail = f"{revision}"
                if revision != [runtime.head]:
                    result.problems.append(f"after the upgrade the store is at {revision}, not at {runtime.head}")
                    row.status = "FAIL"
            with steps.step("every row unchanged") as row:
                row_problems = compare(before, snapshot(engine, same_columns(before)))
                result.problems += row_problems
                row.status, row.detail = (
                    ("FAIL", row_problems[0])
                    if row_problems
                    else ("ok", "strict on tracking and registry tables, keys of trace tables")
                )
            with steps.step("schema equals the fresh store's") as row, engine_for(fresh.uri) as fresh_engine:
                schema_problems = diff(fingerprint(engine), fingerprint(fresh_engine))
                result.problems += [f"schema: {line}" for line in schema_problems]
                row.status, row.detail = (
                    ("FAIL", f"{len(schema_problems)} difference(s), first: {schema_problems[0]}")
                    if schema_problems
                    else ("ok", "tables, columns, types, keys, indexes, constraints")
                )
        _rehearse_auth(settings, backup, runtime, work, result)
        if not server_checks:
            steps.skip("deployment checks on the upgraded copy", "--no-server-checks")
        elif runtime.private:
            steps.skip(
                "deployment checks on the upgraded copy",
                f"they need a server of MLflow {runtime.version}: run them after changing the pin",
            )
        elif not result.problems:
            with steps.step("deployment checks on the upgraded copy (no web UI)") as row:
                on_copy = store_settings(
                    settings, state_dir=work / "server", sqlite_file=target.file, database=target.database
                )
                result.checks = deployment_checks(on_copy, work / "checks")
                row.detail = checks_summary(result.checks)
                if result.checks.failed:
                    row.status = "FAIL"
                    result.problems.append(f"deployment checks: {row.detail}")
    finally:
        _record(settings, result, found)
    if result.ok:
        _drop_scratch(settings, target, fresh, work)
    return result


def _backup_of(settings: Settings, found: Preflight, steps: StepTable) -> Path:
    """The latest backup if it is of the store's revision; a new one otherwise."""
    latest = latest_backup(settings, settings.backend)
    if latest is not None and Manifest.read(latest).alembic_revision == found.stored:
        with steps.step("check the latest backup (sha256)") as row:
            checked(latest)
            row.detail = latest.name
        return latest
    why = "none yet" if latest is None else "the latest is of another revision"
    with steps.step(f"take a backup ({why})") as row:
        folder = take_backup(settings).folder
        row.detail = folder.name
    return folder


@dataclass
class ScratchStore:
    """A store of the rehearsal: a file in the scratch folder, or a database beside the real one."""

    settings: Settings
    file: Path | None = None
    database: str | None = None

    @property
    def uri(self) -> str:  # with the password: for this process only
        return backend_store_uri(self.settings, reveal=True)

    @property
    def child(self) -> tuple[str, dict[str, str]]:  # for MLflow's CLI: no password in argv
        return store_uri_and_password_env(self.settings)

    @property
    def shown(self) -> str:
        return str(self.file) if self.file else f"database {self.database}"


def _scratch_stores(settings: Settings, work: Path) -> tuple[ScratchStore, ScratchStore]:
    if settings.backend == "sqlite":
        files = (work / "rehearsal.db", work / "fresh.db")
        stores = [ScratchStore(store_settings(settings, state_dir=work, sqlite_file=f), file=f) for f in files]
    else:
        name = rehearsal_database(settings)
        stores = [ScratchStore(with_database(settings, n), database=n) for n in (name, f"{name}_fresh")]
    return stores[0], stores[1]


def _restore_scratch(settings: Settings, backup: Path, target: ScratchStore, fresh: ScratchStore) -> None:
    if target.file is not None:
        copy_file_synced(backup / STORE_FILES["sqlite"], target.file)
        return
    assert target.database and fresh.database
    create_database(settings, target.database, replace=True)
    create_database(settings, fresh.database, replace=True)
    PgClient.of(target.settings).restore(backup / STORE_FILES["postgres"])


def _rehearse_auth(settings: Settings, backup: Path, runtime: Runtime, work: Path, result: RehearsalResult) -> None:
    if not (settings.server.auth.enabled and (backup / "auth.sqlite").is_file()):
        return
    with result.steps.step("auth database: upgrade a copy, users and permissions unchanged") as row:
        copy = work / "auth.db"
        copy_file_synced(backup / "auth.sqlite", copy)
        with engine_for(f"sqlite:///{copy}") as engine:
            before = snapshot(engine, {t: None for t in AUTH_TABLES})
            auth_db_upgrade(runtime, copy, settings=settings)
            revision = stored_revisions(engine, AUTH_VERSION_TABLE)
            problems = compare(before, snapshot(engine, same_columns(before)))
        if revision != [runtime.auth_head]:
            problems.insert(0, f"auth database at {revision} after its upgrade, not at {runtime.auth_head}")
        result.problems += [f"auth: {p}" for p in problems]
        row.status, row.detail = (
            ("FAIL", problems[0])
            if problems
            else ("ok", f"-> {runtime.auth_head}; {sum(s.count for s in before.values())} rows")
        )


def _record(settings: Settings, result: RehearsalResult, found: Preflight) -> None:
    record = {
        "ok": result.ok,
        "from": found.stored,
        "to": result.runtime.head,
        "mlflow": result.runtime.version,
        "installed": result.runtime.version == installed().version,
        "backup": result.backup,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "problems": result.problems[:20],
        "steps": result.steps.as_dicts(),
    }
    path = rehearsal_record(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=1)


def _drop_scratch(settings: Settings, target: ScratchStore, fresh: ScratchStore, work: Path) -> None:
    for store in (target, fresh):
        if store.database:
            drop_database(settings, store.database)
    shutil.rmtree(work, ignore_errors=True)
