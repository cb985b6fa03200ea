"""The store lifecycle's records: backup manifests (tampering, finding the newest) and operation
journals (interruptions, a second run refused, the step table). No process started."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks.libs.core.errors import UserError
from tasks.libs.lifecycle.internals.journal import Journal, StepTable, interrupted, interruption_notes
from tasks.libs.lifecycle.internals.manifest import (
    FORMAT,
    Manifest,
    checked,
    find_backups,
    resolve_backup,
    verify_files,
)
from tests.support.settings import make_settings


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


# --- manifests and backups ---------------------------------------------------------------


def _backup(root: Path, name: str, kind: str = "backup") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "store.sqlite").write_bytes(b"SQLite format 3\x00" + b"x" * 100)
    from tasks.libs.lifecycle.internals.sqlite_files import sha256_file

    Manifest(
        FORMAT,
        kind,
        "2026-11-26T19:00:00+00:00",
        "sqlite",
        "sqlite:///x",
        "3.17.2",
        "d4",
        None,
        {"runs": 1},
        {"store.sqlite": sha256_file(folder / "store.sqlite")},
        {"store.sqlite": 116},
        {"mode": "none"},
    ).write(folder)
    return folder


def test_a_tampered_missing_or_foreign_file_is_named(tmp_path):
    folder = _backup(tmp_path, "20261126T190000000000Z-sqlite")
    manifest = checked(folder)
    assert manifest.row_counts == {"runs": 1} and verify_files(folder, manifest) == []
    with open(folder / "store.sqlite", "r+b") as fh:
        fh.seek(50)
        fh.write(b"y")
    (folder / "extra.txt").write_text("?")
    assert verify_files(folder, manifest) == [
        "store.sqlite: sha256 differs from the manifest (changed or damaged)",
        "extra.txt is not in the manifest",
    ]
    with pytest.raises(
        UserError, match=r"is damaged: store.sqlite: sha256 differs .*\(\+1 more\); nothing was restored"
    ):
        checked(folder)


def test_backups_are_found_newest_last_by_backend_and_kind(settings):
    root = settings.state_path / "backups"
    old = _backup(root, "20261126T190000000000Z-sqlite")
    new = _backup(root, "20261126T200000000000Z-sqlite")
    _backup(root, "20261126T210000000000Z-sqlite", kind="pre-restore")
    _backup(root, "20261126T220000000000Z-postgres")
    (root / "20261126T230000000000Z-sqlite.partial-1").mkdir()
    assert find_backups(settings, "sqlite") == [old, new]
    assert resolve_backup(settings, "sqlite", None) == new
    assert resolve_backup(settings, "sqlite", old.name) == old
    with pytest.raises(UserError, match="no backup folder at"):
        resolve_backup(settings, "sqlite", "nope")
    with pytest.raises(UserError, match="no postgres backup"):
        resolve_backup(make_settings(settings.state_path / "other"), "postgres", None)


# --- journals ----------------------------------------------------------------------------


def test_a_finished_operation_leaves_no_journal_and_a_dead_one_is_reported(settings):
    with Journal(settings, "restore", "sqlite", "sqlite:///x") as journal:
        journal.step("copy", if_interrupted="the store is untouched")
    assert interrupted(settings) == []
    with Journal(settings, "upgrade", "postgres", "postgresql+psycopg2://u:***@h/db") as journal:
        journal.step("mlflow db upgrade", if_interrupted="one transaction: still at a1; run it again")
    # the same journal as a killed process leaves it: our pid, another process start time
    path = settings.state_path / "lifecycle" / "upgrade-postgres.journal"
    data = {**journal.data, "create_time": 1.0}
    path.write_text(json.dumps(data))
    [note] = interruption_notes(settings)
    assert note.startswith("NOTE: `db.upgrade` on the postgres store was killed during 'mlflow db upgrade'")
    assert "one transaction: still at a1; run it again" in note and str(path) in note


def test_a_failure_keeps_the_journal_only_once_something_changed(settings):
    with pytest.raises(RuntimeError), Journal(settings, "migrate", "postgres", "t") as journal:
        journal.step("prescan", if_interrupted="nothing written", dirty=False)
        raise RuntimeError("refused")
    assert not journal.path.exists()
    with pytest.raises(RuntimeError), Journal(settings, "migrate", "postgres", "t") as journal:
        journal.step("copy", if_interrupted="rolled back")
        raise RuntimeError("disk full")
    assert json.loads(journal.path.read_text())["failed"] == "RuntimeError: disk full"


def test_a_live_journal_of_another_process_refuses_a_second_run(settings):
    path = settings.state_path / "lifecycle" / "restore-sqlite.journal"
    path.parent.mkdir(parents=True)
    import psutil

    parent = psutil.Process(os.getppid())  # alive for the whole test, and not us
    path.write_text(
        json.dumps(
            {
                "operation": "restore",
                "backend": "sqlite",
                "pid": parent.pid,
                "create_time": parent.create_time(),
                "started": "now",
                "steps": [],
            }
        )
    )
    with pytest.raises(UserError, match=f"already running on this sqlite store \\(pid {parent.pid}"):
        Journal(settings, "restore", "sqlite", "x").__enter__()


def test_step_table_times_and_marks_failures():
    table = StepTable()
    with table.step("one"):
        pass
    with pytest.raises(ValueError), table.step("two"):
        raise ValueError("bad value\nsecond line")
    table.skip("three", "not needed")
    assert [(r.name, r.status, r.detail) for r in table.rows] == [
        ("one", "ok", ""),
        ("two", "FAIL", "bad value"),
        ("three", "skipped", "not needed"),
    ]
    assert "total" in table.render()
