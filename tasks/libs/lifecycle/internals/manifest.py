"""Backup folders and their manifest: what a backup holds, and whether it is still whole.

    <backups_dir>/20261126T190102123456Z-sqlite/
        manifest.json          written last
        store.sqlite | store.pgdump
        auth.sqlite            when the basic-auth database exists
        artifacts.tar          the local artifact folder (absent when there is none)

A backup is built in `<name>.partial-<pid>` and renamed when complete, so a killed backup
never looks like one. Files are private (0600) in private folders (0700): a backup holds
everything the store holds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.lifecycle.internals.sqlite_files import fsync_file, sha256_file

FORMAT = 1
NAME = re.compile(r"^\d{8}T\d{12}Z-(sqlite|postgres)$")
STORE_FILES = {"sqlite": "store.sqlite", "postgres": "store.pgdump"}


def backups_dir(settings: Settings) -> Path:
    configured = settings.lifecycle.backups_dir
    return Path(configured) if configured else settings.state_path / "backups"


@dataclass
class Manifest:
    format: int
    kind: str  # backup | pre-restore (taken by `db.restore --force` of what it replaced)
    created: str  # ISO 8601, UTC
    backend: str  # sqlite | postgres
    source: str  # the store's URI, password masked
    mlflow_version: str
    alembic_revision: str | None
    auth_revision: str | None
    row_counts: dict[str, int]
    files: dict[str, str]  # name -> sha256
    sizes: dict[str, int]
    artifacts: dict[str, Any]  # {"mode": "copied" | "none", "root": ..., "files": n, "bytes": n}
    tools: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        tmp = folder / "manifest.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=1, sort_keys=True)
        fsync_file(tmp)
        os.replace(tmp, folder / "manifest.json")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        try:
            data = json.loads((folder / "manifest.json").read_text())
        except FileNotFoundError:
            raise UserError(f"{folder} is not a backup (no manifest.json)") from None
        except ValueError:
            raise UserError(f"{folder}/manifest.json is damaged (not JSON); this backup cannot be trusted") from None
        if data.get("format") != FORMAT:
            raise UserError(f"{folder}: manifest format {data.get('format')!r} is not one this tool reads ({FORMAT})")
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"{folder}/manifest.json is damaged ({exc})") from None

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.created)

    def age_seconds(self) -> float:
        return (dt.datetime.now(dt.timezone.utc) - self.created_at).total_seconds()

    @property
    def total_rows(self) -> int:
        return sum(self.row_counts.values())


def verify_files(folder: Path, manifest: Manifest) -> list[str]:
    """What is wrong with the backup's files: missing, changed (sha256), or not in the manifest."""
    problems = []
    for name, digest in sorted(manifest.files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name}: sha256 differs from the manifest (changed or damaged)")
    listed = set(manifest.files) | {"manifest.json"}
    problems += [f"{p.name} is not in the manifest" for p in sorted(folder.iterdir()) if p.name not in listed]
    return problems


def checked(folder: Path) -> Manifest:
    """The manifest of a backup whose files are all whole; UserError naming the first problem."""
    manifest = Manifest.read(folder)
    problems = verify_files(folder, manifest)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"backup {folder} is damaged: {problems[0]}{more}; nothing was restored from it")
    return manifest


def find_backups(settings: Settings, backend: str | None = None, *, kinds: tuple[str, ...] = ("backup",)) -> list[Path]:
    """Complete backup folders, oldest first (the name sorts by time)."""
    root = backups_dir(settings)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        match = NAME.match(path.name)
        if not match or not (path / "manifest.json").is_file() or (backend and match.group(1) != backend):
            continue
        try:
            if Manifest.read(path).kind in kinds:
                found.append(path)
        except UserError:
            continue
    return found


def latest_backup(settings: Settings, backend: str) -> Path | None:
    found = find_backups(settings, backend)
    return found[-1] if found else None


def resolve_backup(settings: Settings, backend: str, given: str | None) -> Path:
    """The folder --backup names (a path, or a name in the backups folder), else the latest backup."""
    if given:
        path = Path(given).expanduser()
        if not path.is_absolute() and not path.exists():
            path = backups_dir(settings) / given
        if not path.is_dir():
            raise UserError(f"no backup folder at {path}; `inv db.restore --list` shows the backups")
        return path.resolve()
    latest = latest_backup(settings, backend)
    if latest is None:
        raise UserError(
            f"no {backend} backup in {backups_dir(settings)}; take one with `inv db.backup --backend {backend}`"
        )
    return latest
