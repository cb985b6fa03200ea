"""`db.restore`: put a backup back, never losing what it replaces.

Order: the backup's files are checked against their sha256 first (a damaged or tampered
backup is refused before anything happens); a target that holds data needs --force; the
server must be stopped. SQLite: the backup is copied next to the store, the old store moves
whole (with its -wal/-shm) into `<file>.replaced-<time>/`, the copy is renamed into place.
PostgreSQL: pg_restore as one transaction into an empty database; over a store (--force), a
`pre-restore` dump of what is replaced first, then one `psql --single-transaction` that drops
the old tables (also those the backup does not have: rolling back an upgrade) and runs the
script pg_restore writes: either way a kill changes nothing. Artifacts are
merged in: files the backup has are added, nothing is overwritten or deleted (the artifact
folder is shared by both backends). Afterwards the row counts and the revision must equal
the manifest's.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.lifecycle.backup import BackupResult, auth_db_path, store_facts, take_backup
from tasks.libs.lifecycle.internals.journal import Journal, StepTable
from tasks.libs.lifecycle.internals.manifest import STORE_FILES, Manifest, checked
from tasks.libs.lifecycle.internals.pgtools import PgClient, schema_functions, table_counts
from tasks.libs.lifecycle.internals.sqlite_files import copy_file_synced, stamp, swap_in
from tasks.libs.postgres.connection import ensure_database
from tasks.libs.server.control import running_record

# What a store that holds nothing yet has (a fresh `mlflow db upgrade`, or a server's first start).
SEED_ROWS = {"alembic_version": 1, "workspaces": 1, "experiments": 1}


@dataclass
class RestoreResult:
    manifest: Manifest
    steps: StepTable
    kept: str | None = None  # where the replaced store went
    artifacts: dict[str, int] = field(default_factory=dict)


def holds_data(counts: dict[str, int]) -> dict[str, int]:
    """The tables whose rows a fresh store would not have (empty: nothing would be lost)."""
    return {t: n for t, n in sorted(counts.items()) if n > SEED_ROWS.get(t, 0) and not t.startswith("_alembic_tmp")}


def refuse_while_served(settings: Settings, doing: str) -> None:
    server = running_record(settings)
    if server and server.backend == settings.backend:
        raise UserError(
            f"the MLflow server (pid {server.pid}) uses this {settings.backend} store; `inv server.stop` before {doing}"
        )


def restore_backup(
    settings: Settings, folder: Path, *, force: bool, say: Callable[[str], None] = print
) -> RestoreResult:
    manifest = checked(folder)
    backend = settings.backend
    if manifest.backend != backend:
        raise UserError(
            f"{folder.name} is a {manifest.backend} backup and the target is the {backend} store; "
            f"restore it with --backend {manifest.backend} (SQLite -> PostgreSQL is `inv db.migrate`)"
        )
    refuse_while_served(settings, "restoring it")
    target = backend_store_uri(settings)
    steps = StepTable(say=say)
    with Journal(settings, "restore", backend, target) as journal:
        steps.journal = journal
        if backend == "sqlite":
            kept = _restore_sqlite(settings, folder, force=force, steps=steps)
        else:
            kept = _restore_postgres(settings, folder, manifest, force=force, steps=steps, say=say)
        result = RestoreResult(manifest, steps, kept)
        if (folder / "auth.sqlite").is_file():
            _restore_auth(settings, folder, steps)
        if (folder / "artifacts.tar").is_file():
            with steps.step(
                "merge the artifacts (add missing files only)",
                if_interrupted=f"the store is restored; some artifact files are not back yet: run `inv db.restore --force --backup {folder}` again (files already there are kept)",
            ) as row:
                result.artifacts = merge_artifacts(folder / "artifacts.tar", settings.artifacts_dir)
                row.detail = f"{result.artifacts['added']} added, {result.artifacts['present']} already there"
        with steps.step(
            "row counts and revision equal the manifest",
            if_interrupted="the restore is complete; only its check was cut short",
            dirty=False,
        ) as row:
            counts, revision = store_facts(backend_store_uri(settings, reveal=True))
            differ = {
                t: (manifest.row_counts.get(t), counts.get(t))
                for t in set(counts) | set(manifest.row_counts)
                if counts.get(t) != manifest.row_counts.get(t)
            }
            if differ or revision != manifest.alembic_revision:
                raise UserError(
                    f"the restored store differs from the manifest (revision {revision} vs {manifest.alembic_revision}; "
                    f"rows (manifest, now): {dict(sorted(differ.items())[:5])})"
                )
            row.detail = f"{sum(counts.values())} rows in {len(counts)} tables, revision {revision}"
    return result


def _restore_sqlite(settings: Settings, folder: Path, *, force: bool, steps: StepTable) -> str | None:
    target = settings.sqlite_file
    if target.exists() and target.stat().st_size > 0:
        try:
            filled = holds_data(store_facts(backend_store_uri(settings))[0])
        except UserError:
            filled = {"(not an MLflow store)": 1}
        if filled and not force:
            raise UserError(_not_empty(target, filled))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".restoring")
    kept_dir = target.with_name(f"{target.name}.replaced-{stamp()}")
    with steps.step(
        "copy the backup next to the store",
        if_interrupted=f"the store is untouched; a partial copy {tmp} may be left (the next restore replaces it)",
    ):
        copy_file_synced(folder / STORE_FILES["sqlite"], tmp)

    def moving() -> None:
        if steps.journal:
            steps.journal.step(
                "move the old store aside",
                if_interrupted=f"the old store is being moved into {kept_dir} (with its -wal/-shm); the restored copy is {tmp}: move the files in {kept_dir} back, or run `inv db.restore --force` again",
            )

    def renaming() -> None:
        if steps.journal:
            steps.journal.step(
                "put the restored copy in place",
                if_interrupted=f"the old store is whole in {kept_dir}; {target} may be missing and the restored copy is {tmp}: run `inv db.restore --force` again to finish",
            )

    with steps.step("swap: old store aside, restored copy in place") as row:
        kept = swap_in(tmp, target, kept_dir=kept_dir, before_move=moving, before_rename=renaming)
        os.chmod(target, 0o600)
        row.detail = f"old store kept in {kept}" if kept else "there was no old store"
    return str(kept) if kept else None


def _restore_postgres(
    settings: Settings, folder: Path, manifest: Manifest, *, force: bool, steps: StepTable, say: Callable[[str], None]
) -> str | None:
    client = PgClient.of(settings)
    client.check_server_version(settings)
    if settings.postgres.provider != "external":
        ensure_database(settings)
    counts = table_counts(settings)
    filled = holds_data(counts)
    if filled and not force:
        raise UserError(_not_empty(f"database {client.database}", filled))
    dump = folder / STORE_FILES["postgres"]
    kept = None
    if filled:
        with steps.step("dump what is replaced (pre-restore backup)") as row:
            safety: BackupResult = take_backup(settings, kind="pre-restore")
            kept = str(safety.folder)
            row.detail = f"kept in {kept}"
    again = f"run `inv db.restore{' --force' if counts else ''}` again"
    if not counts:
        with steps.step(
            "pg_restore --single-transaction into the empty database",
            if_interrupted=f"pg_restore runs as one transaction: database {client.database} is still empty; {again}",
        ):
            client.restore(dump)
        return kept
    extra = sorted(set(counts) - client.dump_objects(dump, "TABLE"))
    with steps.step(
        "drop the old tables + pg_restore, in one psql --single-transaction",
        if_interrupted=f"the replace runs as one transaction: database {client.database} still holds what it held before; {again}",
    ) as row:
        client.restore_replacing(dump, drop_tables=sorted(counts), drop_functions=schema_functions(settings))
        row.detail = f"{len(counts)} tables replaced" + (
            f", {len(extra)} of them not in the backup (e.g. {extra[0]})" if extra else ""
        )
    return kept


def _restore_auth(settings: Settings, folder: Path, steps: StepTable) -> None:
    target = auth_db_path(settings)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(target.name + ".restoring")
    kept_dir = target.with_name(f"{target.name}.replaced-{stamp()}")
    with steps.step(
        "restore the auth database",
        if_interrupted=f"the auth database is being swapped: the old one is in place or whole in {kept_dir}, the restored copy is {tmp}; run `inv db.restore --force` again",
    ) as row:
        copy_file_synced(folder / "auth.sqlite", tmp)
        kept = swap_in(tmp, target, kept_dir=kept_dir)
        row.detail = f"old one kept in {kept}" if kept else ""


def merge_artifacts(archive: Path, root: Path) -> dict[str, int]:
    """Add the archive's files that are missing under root; never overwrite or delete (written via tmp + rename)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    added = present = skipped = 0
    with tarfile.open(archive) as tar:
        for member in tar:
            rel = PurePosixPath(member.name)
            if not member.isfile() or rel.is_absolute() or ".." in rel.parts:
                skipped += 1  # only plain files inside the folder: no links, no escapes
                continue
            dest = root.joinpath(*rel.parts)
            if dest.exists() and dest.stat().st_size == member.size:
                present += 1
                continue
            if dest.exists():  # same name, other size: a different file of someone's; keep it
                skipped += 1
                continue
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = dest.with_name(f".{dest.name}.restoring")
            source = tar.extractfile(member)
            assert source is not None
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while block := source.read(1 << 20):
                    out.write(block)
            os.replace(tmp, dest)
            added += 1
    return {"added": added, "present": present, "skipped": skipped}


def _not_empty(where: object, filled: dict[str, int]) -> str:
    shown = ", ".join(f"{t}={n}" for t, n in list(filled.items())[:5])
    return f"{where} already holds data ({shown}); --force replaces it (the old store is kept: SQLite file moved aside, PostgreSQL dumped first)"
