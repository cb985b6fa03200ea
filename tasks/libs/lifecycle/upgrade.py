"""`db.upgrade --apply`: run `mlflow db upgrade` on the real store, only when it is safe, never half-way.

Preflight first: a store at a revision the installed MLflow does not know (newer) or one with
more schema than its recorded revision (partly migrated) is refused, with both revisions or
the last backup named; `alembic stamp` is never run. Then a stopped server and a recent backup
of this very revision (or --no-backup, said explicitly).

SQLite migrations are not transactional (a kill can leave a partly migrated file), so the
SQLite store is upgraded as a copy beside it, checked (revision, integrity, row counts), and
swapped in, the old file kept whole in `<file>.pre-upgrade-<time>/`. PostgreSQL runs the whole
upgrade in one transaction (alembic transactional DDL): it is upgraded in place.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from tasks.libs.core.credentials import backend_store_uri, store_uri_and_password_env
from tasks.libs.core.databases import engine_for
from tasks.libs.core.durations import format_duration, parse_duration
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.lifecycle.backup import auth_db_path, sqlite_revision
from tasks.libs.lifecycle.internals.journal import Journal, StepTable, journal_dir
from tasks.libs.lifecycle.internals.manifest import Manifest, checked, latest_backup
from tasks.libs.lifecycle.internals.runtime import Runtime, auth_db_upgrade, db_upgrade, installed
from tasks.libs.lifecycle.internals.schema_compare import partly_migrated
from tasks.libs.lifecycle.internals.snapshot import CORE_TABLES, row_counts
from tasks.libs.lifecycle.internals.sqlite_files import integrity_check, online_copy, stamp, swap_in
from tasks.libs.lifecycle.restore import refuse_while_served
from tasks.libs.store.reader import open_store
from tasks.libs.store.revisions import AUTH_VERSION_TABLE, Preflight, preflight, stored_revisions


@dataclass
class UpgradeResult:
    preflight: Preflight
    steps: StepTable
    kept: str | None = None
    notes: list[str] = field(default_factory=list)


def check_store(settings: Settings, runtime: Runtime) -> Preflight:
    """The live store's preflight (read-only); UserError for a store no upgrade may touch."""
    mine = installed()
    with open_store(backend_store_uri(settings, reveal=True)) as store:
        conn = store.connection
        tables = sa.inspect(conn).get_table_names()
        stored = stored_revisions(conn)

        def partial(revision: str) -> list[str]:
            if revision not in mine.revisions:  # only the installed MLflow's migrations can build the reference
                return []
            return partly_migrated(conn, revision, journal_dir(settings) / "scratch")  # type: ignore[arg-type]

        found = preflight(
            tables,
            stored,
            head=runtime.head,
            known=runtime.revisions,
            mlflow_version=runtime.version,
            partial_check=partial,
        )
    if found.state in ("newer", "branched", "unversioned"):
        raise UserError(found.problems[0])
    if found.state == "partial":
        last = latest_backup(settings, settings.backend)
        where = (
            f"restore the last backup: `inv db.restore --force --backend {settings.backend} --backup {last}`"
            if last
            else "restore your last backup (none in the backups folder)"
        )
        raise UserError(f"the store is partly migrated: {found.problems[0]}; {where}")
    return found


def require_backup(settings: Settings, revision: str | None) -> Manifest:
    """The latest backup of this backend, whole, of this revision and younger than lifecycle.max_backup_age."""
    limit = parse_duration(settings.lifecycle.max_backup_age)
    folder = latest_backup(settings, settings.backend)
    hint = f"`inv db.backup --backend {settings.backend}` first (or --no-backup to upgrade without one)"
    if folder is None:
        raise UserError(f"no backup of the {settings.backend} store yet; {hint}")
    manifest = checked(folder)
    if manifest.age_seconds() > limit:
        raise UserError(
            f"the latest backup ({folder.name}) is {format_duration(manifest.age_seconds())} old, more than "
            f"lifecycle.max_backup_age ({settings.lifecycle.max_backup_age}); {hint}"
        )
    if manifest.alembic_revision != revision:
        raise UserError(
            f"the latest backup ({folder.name}) is at revision {manifest.alembic_revision}, the store at {revision}: "
            f"it is not a backup of this store as it is now; {hint}"
        )
    return manifest


def rehearsal_record(settings: Settings) -> Path:
    return journal_dir(settings) / f"rehearsal-{settings.backend}.json"


def apply_upgrade(settings: Settings, *, no_backup: bool, say: Callable[[str], None] = print) -> UpgradeResult:
    runtime = installed()
    refuse_while_served(settings, "upgrading it")
    found = check_store(settings, runtime)
    result = UpgradeResult(found, StepTable(say=say))
    if found.state == "head":
        return result
    if not no_backup:
        manifest = require_backup(settings, found.stored)
        result.notes.append(f"backup: {manifest.created} ({manifest.total_rows} rows)")
    else:
        result.notes.append("no backup required (--no-backup)")
    rehearsed = _rehearsed(settings, found.stored, runtime.head)
    if not rehearsed:
        result.notes.append(
            f"NOTE: no passing rehearsal of {found.stored} -> {runtime.head} on record (`inv db.upgrade` rehearses)"
        )
    with Journal(settings, "upgrade", settings.backend, backend_store_uri(settings)) as journal:
        result.steps.journal = journal
        if settings.backend == "sqlite":
            result.kept = _upgrade_sqlite_file(settings, settings.sqlite_file, runtime, found, result.steps)
        else:
            _upgrade_postgres(settings, runtime, found, result.steps)
        auth = auth_db_path(settings)
        if auth.is_file() and sqlite_revision(auth, AUTH_VERSION_TABLE) != runtime.auth_head:
            _upgrade_auth_file(settings, auth, runtime, result.steps)
    return result


def _rehearsed(settings: Settings, start: str | None, head: str) -> bool:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(rehearsal_record(settings).read_text())
        return bool(record.get("ok")) and record.get("from") == start and record.get("to") == head
    return False


def _core_counts(uri: str) -> dict[str, int]:
    with engine_for(uri) as engine:
        return {t: n for t, n in row_counts(engine).items() if t in CORE_TABLES}


def _upgrade_sqlite_file(
    settings: Settings, target: Path, runtime: Runtime, found: Preflight, steps: StepTable
) -> str | None:
    copy = target.with_name(target.name + ".upgrading")
    kept_dir = target.with_name(f"{target.name}.pre-upgrade-{stamp()}")
    untouched = f"the store {target} is untouched (the upgrade runs on a copy, {copy}, which the next run replaces): run `inv db.upgrade --apply` again"
    with steps.step("copy the store (SQLite backup API)", if_interrupted=untouched):
        online_copy(target, copy)
    before = _core_counts(f"sqlite:///{copy}")
    with steps.step(f"mlflow db upgrade of the copy (MLflow {runtime.version})", if_interrupted=untouched) as row:
        db_upgrade(runtime, f"sqlite:///{copy}", settings=settings, env={})
        row.detail = f"{found.stored} -> {runtime.head}"
    with steps.step("check the copy: revision, integrity, row counts", if_interrupted=untouched) as row:
        _check_upgraded(f"sqlite:///{copy}", runtime.head, before)
        problems = integrity_check(copy)
        if problems:
            raise UserError(f"the upgraded copy fails integrity_check ({problems[0]}); the store is untouched")
        row.detail = f"revision {runtime.head}, {sum(before.values())} core rows unchanged"

    def moving() -> None:
        if steps.journal:
            steps.journal.step(
                "move the old store aside",
                if_interrupted=f"the old store is being moved into {kept_dir}; the upgraded copy is {copy}: move the files in {kept_dir} back and run `inv db.upgrade --apply` again",
            )

    def renaming() -> None:
        if steps.journal:
            steps.journal.step(
                "put the upgraded copy in place",
                if_interrupted=f"the old store is whole in {kept_dir}; {target} may be missing and the upgraded, checked copy is {copy}: rename it to {target.name}, or move the old one back",
            )

    with steps.step("swap: old store aside, upgraded copy in place") as row:
        kept = swap_in(copy, target, kept_dir=kept_dir, before_move=moving, before_rename=renaming)
        row.detail = f"old store kept in {kept}"
    return str(kept) if kept else None


def _check_upgraded(uri: str, head: str, before: dict[str, int]) -> None:
    with engine_for(uri) as engine:
        revision = stored_revisions(engine)
        after = {t: n for t, n in row_counts(engine).items() if t in before}
    if revision != [head]:
        raise UserError(f"after mlflow db upgrade the store is at {revision}, not at the head {head}")
    if after != before:
        changed = {t: (before[t], after.get(t)) for t in before if before[t] != after.get(t)}
        raise UserError(f"mlflow db upgrade changed row counts (before, after): {changed}")


def _upgrade_postgres(settings: Settings, runtime: Runtime, found: Preflight, steps: StepTable) -> None:
    uri, env = store_uri_and_password_env(settings)
    full = backend_store_uri(settings, reveal=True)
    before = _core_counts(full)
    with steps.step(
        f"mlflow db upgrade in one transaction (MLflow {runtime.version})",
        if_interrupted=f"PostgreSQL runs the upgrade as one transaction: the store is still at {found.stored} with every row; run `inv db.upgrade --apply` again",
    ) as row:
        db_upgrade(runtime, uri, settings=settings, env=env)
        row.detail = f"{found.stored} -> {runtime.head}"
    with steps.step(
        "check: revision and row counts",
        if_interrupted="the upgrade is committed; only its check was cut short",
        dirty=False,
    ) as row:
        _check_upgraded(full, runtime.head, before)
        row.detail = f"revision {runtime.head}, {sum(before.values())} core rows unchanged"


def _upgrade_auth_file(settings: Settings, auth: Path, runtime: Runtime, steps: StepTable) -> None:
    copy = auth.with_name(auth.name + ".upgrading")
    kept_dir = auth.with_name(f"{auth.name}.pre-upgrade-{stamp()}")
    untouched = f"the auth database {auth} is untouched (its copy {copy} is replaced by the next run)"
    with steps.step("upgrade a copy of the auth database", if_interrupted=untouched) as row:
        online_copy(auth, copy)
        auth_db_upgrade(runtime, copy, settings=settings)
        revision = sqlite_revision(copy, AUTH_VERSION_TABLE)
        if revision != runtime.auth_head:
            raise UserError(f"the auth database copy is at {revision} after its upgrade, not at {runtime.auth_head}")
        row.detail = f"-> {revision}"
    with steps.step(
        "swap the auth database",
        if_interrupted=f"the old auth database is in place or whole in {kept_dir}; the upgraded copy is {copy}",
    ):
        swap_in(copy, auth, kept_dir=kept_dir)
