"""The state directory, where all runtime state lives."""

from __future__ import annotations

from pathlib import Path

from tasks.libs.core.settings import Settings

# Others may traverse it (PostgreSQL may run as its own OS user and must reach its cluster),
# not list it; what lies inside has modes of its own (0700 folders, 0600 files).
STATE_DIR_MODE = 0o711


def ensure_state_dir(settings: Settings) -> Path:
    """Make the state dir if missing (an existing one keeps its mode: `inv test.security` judges it)."""
    path = settings.state_path
    path.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    return path
