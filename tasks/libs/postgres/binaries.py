"""Where the machine's PostgreSQL programs are: server binaries for the local provider, clients."""

from __future__ import annotations

import shutil
from pathlib import Path

SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
SEARCH_PATTERNS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/usr/local/pgsql/bin",
)


def find_binaries(bin_dir: str | None, tools: tuple[str, ...] = SERVER_TOOLS) -> Path | None:
    """The folder holding every one of tools: config, then PATH, then the usual places (newest first)."""
    candidates: list[Path] = []
    if bin_dir:
        candidates.append(Path(bin_dir))
    on_path = shutil.which(tools[0])
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for pattern in SEARCH_PATTERNS:
        candidates += sorted(Path("/").glob(pattern.lstrip("/")), key=_version_key, reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in tools):
            return folder
    return None


def _version_key(path: Path) -> int:
    digits = "".join(ch for ch in path.parent.name if ch.isdigit())
    return int(digits) if digits else 0
