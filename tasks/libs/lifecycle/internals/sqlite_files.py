"""SQLite store files: an online copy through the backup API, integrity checks, a swap that never
leaves neither file whole, and a few file-system helpers (sha256, fsync).

A store may be written by a live server while we copy it, so copies go through SQLite's
backup API from a read-only connection, never a file copy: with pages=-1 the copy is one
step under one read transaction, a consistent snapshot (in WAL mode writers carry on; in
rollback mode they wait, and MLflow's busy_timeout is 20 s).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

from tasks.libs.core.databases import connect_sqlite_readonly, sqlite_connection, sqlite_readonly
from tasks.libs.core.errors import UserError

SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def online_copy(source: Path, dest: Path) -> None:
    """A consistent copy of a live store (backup API, source opened read-only), as one plain file.

    The copy is switched to rollback-journal mode so it stands alone (no -wal beside it), and
    checked with PRAGMA integrity_check; a failure removes it and says why.
    """
    dest.unlink(missing_ok=True)
    try:
        source_conn = connect_sqlite_readonly(source, timeout=30)
    except sqlite3.Error as exc:
        raise UserError(f"cannot open {source} read-only ({exc})") from None
    with contextlib.closing(source_conn) as src:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            with sqlite_connection(dest) as out:
                src.backup(out, pages=-1)
                out.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:
            dest.unlink(missing_ok=True)
            raise UserError(f"the SQLite backup API could not copy {source} ({exc})") from None
    problems = integrity_check(dest)
    if problems:
        dest.unlink(missing_ok=True)
        raise UserError(f"the copy of {source} fails PRAGMA integrity_check ({'; '.join(problems[:3])})")
    fsync_file(dest)


def integrity_check(path: Path) -> list[str]:
    """PRAGMA integrity_check's complaints (empty: ok)."""
    with sqlite_readonly(path) as conn:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
    return [] if rows == ["ok"] else rows


def swap_in(new_file: Path, target: Path, *, kept_dir: Path, before_move=None, before_rename=None) -> Path | None:
    """Put new_file (complete, fsync'd, in target's folder) at target; the old store goes whole to kept_dir.

    1. the old target *with its -wal/-shm/-journal* moves into kept_dir (renames: a WAL holds
       committed transactions; deleting it would lose them, and left beside a new file SQLite
       would replay it into the wrong database);
    2. new_file is renamed to target and the folder fsync'd.
    A kill before 2 leaves the old store whole in place or in kept_dir. before_move and
    before_rename are called first (the caller's journal steps). Returns kept_dir, or None
    when there was no old store.
    """
    kept: Path | None = None
    if before_move:
        before_move()
    parts = [Path(str(target) + suffix) for suffix in ("", *SIDE_SUFFIXES)]
    if any(p.exists() for p in parts):
        kept_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for part in parts:
            if part.exists():
                os.replace(part, kept_dir / part.name)
        fsync_dir(kept_dir)
        kept = kept_dir
    if before_rename:
        before_rename()
    os.replace(new_file, target)
    fsync_dir(target.parent)
    return kept


def copy_file_synced(source: Path, dest: Path) -> None:
    """A plain copy (of a backup file that nothing writes), fsync'd."""
    dest.unlink(missing_ok=True)
    shutil.copyfile(source, dest)
    os.chmod(dest, 0o600)
    fsync_file(dest)


def checkpoint(path: Path) -> tuple[int, int, int]:
    """PRAGMA wal_checkpoint(TRUNCATE): (busy, log frames, checkpointed frames); (0, 0, 0) when done."""
    with sqlite_connection(path) as conn:
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def file_sizes(path: Path) -> dict[str, int]:
    """The store file and its side files, in bytes (absent ones left out)."""
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(path) + suffix)
        if part.exists():
            sizes[part.name] = part.stat().st_size
    return sizes
