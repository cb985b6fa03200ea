"""`db.backup`: the store (SQLite backup API or pg_dump -Fc), the auth database and the artifacts, with a manifest.

A backup never stops the server: SQLite is copied through the backup API from a read-only
connection (one consistent snapshot while clients keep writing), PostgreSQL by pg_dump (one
snapshot too). The row counts in the manifest are read from the copy itself (the SQLite copy,
or the dump's own COPY data), never from the live store, which has moved on by then.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.databases import sqlite_readonly
from tasks.libs.core.durations import format_duration
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.lifecycle.internals.journal import StepTable
from tasks.libs.lifecycle.internals.manifest import (
    FORMAT,
    STORE_FILES,
    Manifest,
    backups_dir,
    find_backups,
    verify_files,
)
from tasks.libs.lifecycle.internals.pgtools import PgClient
from tasks.libs.lifecycle.internals.sqlite_files import fsync_dir, online_copy, sha256_file, stamp
from tasks.libs.reporting.formats import human_bytes
from tasks.libs.store.reader import open_store


@dataclass
class BackupResult:
    folder: Path
    manifest: Manifest
    steps: StepTable
    pruned: list[Path]


def auth_db_path(settings: Settings) -> Path:
    """The basic-auth database (server.auth): always SQLite, one per state dir (see server/auth.py)."""
    return settings.state_path / "auth" / "basic_auth.db"


def store_facts(uri: str) -> tuple[dict[str, int], str | None]:
    """Row count of every table and the alembic revision of an MLflow store (read-only)."""
    with open_store(uri) as store:
        counts = {t: int(store.scalar(f"SELECT count(*) FROM {store.quote(t)}")) for t in store.tables()}
        revisions = [r[0] for r in store.rows("SELECT version_num FROM alembic_version")]
    return counts, ",".join(revisions) or None


def sqlite_revision(path: Path, table: str) -> str | None:
    try:
        with sqlite_readonly(path) as conn:
            rows = [r[0] for r in conn.execute(f'SELECT version_num FROM "{table}"')]
    except sqlite3.Error:
        return None
    return ",".join(rows) or None


def take_backup(settings: Settings, *, kind: str = "backup", say: Callable[[str], None] | None = None) -> BackupResult:
    import mlflow

    backend = settings.backend
    root = backups_dir(settings)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_abandoned(root)
    name = f"{stamp()}-{backend}"
    work = root / f"{name}.partial-{os.getpid()}"
    work.mkdir(mode=0o700)
    steps = StepTable(say=say)
    tools = {"sqlite": sqlite3.sqlite_version}
    try:
        store_file = work / STORE_FILES[backend]
        if backend == "sqlite":
            source = settings.sqlite_file
            if not source.is_file():
                raise UserError(f"no SQLite store at {source}: nothing to back up")
            store_facts(backend_store_uri(settings))  # refuses a file that is no MLflow store
            with steps.step("copy the store (SQLite backup API) + integrity_check"):
                online_copy(source, store_file)
            with steps.step("row counts and revision of the copy"):
                counts, revision = store_facts(f"sqlite:///{store_file}")
        else:
            client = PgClient.of(settings)
            tools["pg_dump"] = client.check_server_version(settings)
            with steps.step("pg_dump -Fc (one snapshot) + pg_restore --list"):
                client.dump(store_file)
            with steps.step("row counts and revision from the dump"):
                counts = client.dump_counts(store_file)
                revision = client.dump_revision(store_file)
            if "alembic_version" not in counts:
                raise UserError(f"the database {client.database} holds no MLflow store (no alembic_version table)")
        auth_revision = None
        auth_db = auth_db_path(settings)
        if auth_db.is_file():
            with steps.step("copy the auth database (SQLite backup API)"):
                online_copy(auth_db, work / "auth.sqlite")
                auth_revision = sqlite_revision(work / "auth.sqlite", "alembic_version_auth")
        artifacts: dict = {"mode": "none", "root": str(settings.artifacts_dir)}
        if settings.artifacts_dir.is_dir():
            with steps.step("archive the artifacts (tar)") as row:
                files, size = archive_artifacts(settings.artifacts_dir, work / "artifacts.tar")
                artifacts.update(mode="copied", files=files, bytes=size)
                row.detail = f"{files} files, {size} bytes"
        with steps.step("sha256 of every file + manifest"):
            names = sorted(p.name for p in work.iterdir())
            manifest = Manifest(
                format=FORMAT,
                kind=kind,
                created=_utc_now(),
                backend=backend,
                source=backend_store_uri(settings),
                mlflow_version=mlflow.__version__,
                alembic_revision=revision,
                auth_revision=auth_revision,
                row_counts=counts,
                files={n: sha256_file(work / n) for n in names},
                sizes={n: (work / n).stat().st_size for n in names},
                artifacts=artifacts,
                tools=tools,
                seconds={r.name: round(r.seconds, 3) for r in steps.rows},
            )
            manifest.write(work)
            fsync_dir(work)
        final = root / name
        os.replace(work, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    pruned = prune(settings, backend) if kind == "backup" else []
    return BackupResult(final, manifest, steps, pruned)


def archive_artifacts(root: Path, dest: Path) -> tuple[int, int]:
    """An uncompressed tar of the artifact folder (compression costs CPU the server needs); (files, bytes)."""
    files = size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for entry in sorted(names):
                path = Path(folder) / entry
                if path.is_symlink() or not path.is_file():
                    continue  # the server writes plain files; a link could point anywhere
                try:
                    length = path.stat().st_size
                    tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
                except FileNotFoundError:  # removed while we walked (a gc)
                    continue
                files += 1
                size += length
    return files, size


def prune(settings: Settings, backend: str) -> list[Path]:
    """Delete all but the newest lifecycle.keep_backups backups of this backend; what was deleted."""
    keep = settings.lifecycle.keep_backups
    if not keep:
        return []
    old = find_backups(settings, backend)[:-keep]
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)
    return old


def _remove_abandoned(root: Path) -> None:
    """Half-built backups of runs that are gone (killed): `<name>.partial-<pid>` with a dead pid."""
    for path in root.glob("*.partial-*"):
        pid = path.name.rpartition("-")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def backup_rows(settings: Settings, backend: str) -> list[list[str]]:
    """A table of the backups of this backend for `db.restore --list`: newest last."""
    rows = []
    for folder in find_backups(settings, backend, kinds=("backup", "pre-restore")):
        manifest = Manifest.read(folder)
        problems = verify_files(folder, manifest)
        rows.append(
            [
                folder.name,
                manifest.kind,
                f"{format_duration(manifest.age_seconds())} ago",
                manifest.mlflow_version,
                manifest.alembic_revision or "-",
                str(manifest.total_rows),
                human_bytes(sum(manifest.sizes.values())),
                "ok" if not problems else f"DAMAGED: {problems[0]}",
            ]
        )
    return rows


BACKUP_LIST_HEADERS = ["backup", "kind", "age", "mlflow", "revision", "rows", "size", "sha256"]
