"""Pid files: a live record is returned, a stale one (process gone or pid reused) removed."""

import os

from tasks.libs.core.processes import ProcessRecord


def test_live_returns_the_record_of_a_running_process(tmp_path):
    path = tmp_path / "me.pid"
    ProcessRecord.of(os.getpid()).write(path)
    record = ProcessRecord.live(path)
    assert record is not None and record.pid == os.getpid() and path.exists()


def test_live_removes_a_pid_file_whose_pid_was_reused(tmp_path):
    path = tmp_path / "reused.pid"
    mine = ProcessRecord.of(os.getpid())
    ProcessRecord(pid=mine.pid, pgid=mine.pgid, create_time=mine.create_time - 3600, started_at=0).write(path)
    assert ProcessRecord.live(path) is None and not path.exists()


def test_live_without_a_pid_file_or_with_a_corrupt_one_is_none(tmp_path):
    assert ProcessRecord.live(tmp_path / "missing.pid") is None
    corrupt = tmp_path / "corrupt.pid"
    corrupt.write_text("{not json")
    assert ProcessRecord.live(corrupt) is None and not corrupt.exists()
