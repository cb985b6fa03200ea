"""Pid files read through ManagedProcess: a live record is returned, a stale one (process gone or
pid reused) or a corrupt one removed. No process is started: the record names this test's own. And
the free ports the tool hands out: never the same one twice."""

import os

from tasks.libs.core.managed import ManagedProcess
from tasks.libs.core.processes import ProcessRecord, free_port, free_ports_in_a_row


def _process(tmp_path, name: str = "me") -> ManagedProcess[ProcessRecord]:
    return ManagedProcess(
        name, pid_file=tmp_path / f"{name}.pid", log_file=tmp_path / f"{name}.log", record=ProcessRecord
    )


def test_running_returns_the_record_of_a_live_process(tmp_path):
    process = _process(tmp_path)
    ProcessRecord.of(os.getpid()).write(process.pid_file)
    record = process.running()
    assert record is not None and record.pid == os.getpid() and process.pid_file.exists()
    assert process.leader_alive(record)


def test_running_removes_a_pid_file_whose_pid_was_reused(tmp_path):
    """Our pid with another start time: the recorded program is gone, and no member of the group
    (ours is whatever group pytest runs in) counts as its."""
    process = _process(tmp_path, "reused")
    mine = ProcessRecord.of(os.getpid())
    ProcessRecord(pid=mine.pid, pgid=mine.pgid, create_time=mine.create_time - 3600, started_at=0).write(
        process.pid_file
    )
    assert process.members() == []
    assert process.running() is None and not process.pid_file.exists()


def test_running_without_a_pid_file_or_with_a_corrupt_one_is_none(tmp_path):
    assert _process(tmp_path, "missing").running() is None
    corrupt = _process(tmp_path, "corrupt")
    corrupt.pid_file.write_text("{not json")
    assert corrupt.running() is None and not corrupt.pid_file.exists()


def test_free_port_never_hands_out_a_port_twice_even_when_the_os_offers_it_again():
    # Nothing listens between choosing a port and starting its program, so the kernel may offer
    # one again; 500 choices would almost surely repeat one without the memory of what was given.
    ports = [free_port() for _ in range(500)]
    first = free_ports_in_a_row(3)
    later = {free_port() for _ in range(200)}
    assert len(set(ports)) == len(ports)
    assert not later & {first, first + 1, first + 2} and not later & set(ports)
