"""The one way this tool runs a background program: a process group we start, wait for, and stop.

On the lines of mirakuru's executors. A ManagedProcess knows where its pid file and log live,
what it is called in messages, its grace period and its secrets (masked in every log tail it
shows). `start(Launch(...))` takes what to run: the command, its environment and folder, the
ports it will listen on, a readiness probe and a timeout. It refuses a busy port in one line,
starts the command as the leader of a new process group, writes a typed record (pid file),
polls the probe and, when the program dies or never gets ready, stops the whole group and
raises a UserError that ends with the log's tail. It is the only caller of start_group
(tests/unit/test_one_way_to_start.py keeps it so).

The queries: `record()` (the pid file, live or not), `running()` (the record while any member
lives; a stale pid file is removed), `members()`, `leader_alive()`, `log_tail()`.

"Running" means the whole group: uvicorn's workers or a daemon's children outlive a killed
leader and keep its port, so a group with any live member of ours is running (and `stop`
stops all of it). A member is ours when it was started no earlier than the leader we
recorded; when the leader's pid is alive as another program (pid reuse), nothing is ours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import psutil

from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import (
    ProcessRecord,
    group_members,
    port_holder,
    port_is_free,
    start_group,
    stop_group,
    tail,
)
from tasks.libs.core.redact import redact
from tasks.libs.core.waits import wait_ready, wait_until

R = TypeVar("R", bound=ProcessRecord)


@dataclass(frozen=True)
class Listener:
    """A port the program will listen on, and what a user can do when another program holds it
    besides stopping that program (`set artifacts.s3.port`): the busy-port message ends with it."""

    host: str
    port: int
    fix: str


@dataclass
class Launch:
    """What to run and how to tell that it is ready.

    ready() returns None when the program serves, else why not (shown on timeout); it may
    raise UserError to give up at once (a refused password will not get better).
    fields are the typed record's own fields (the server's URL, HAProxy's config hash, ...).
    """

    command: list[str]
    env: dict[str, str]
    cwd: Path
    ready: Callable[[], str | None]
    timeout: float
    listeners: Sequence[Listener] = ()
    fields: dict[str, Any] = field(default_factory=dict)
    log_lines: int = 15


class ManagedProcess(Generic[R]):
    """A program we run in the background: <pid_file> holds its record, <log_file> its output."""

    def __init__(
        self,
        name: str,
        *,
        pid_file: Path,
        log_file: Path,
        record: type[R],
        grace: float = 5.0,
        secrets: Sequence[str] | Callable[[], Sequence[str]] = (),
    ):
        """secrets: the strings to mask, or a function that returns them when a tail is shown
        (a secret the start-up itself generates is then masked too)."""
        self.name = name
        self.pid_file = pid_file
        self.log_file = log_file
        self.record_type = record
        self.grace = grace
        self.secrets = secrets

    # --- queries ------------------------------------------------------------------------

    def record(self) -> R | None:
        """What the pid file says, whether or not the process still runs."""
        return self.record_type.read(self.pid_file)

    def members(self, record: R | None = None) -> list[psutil.Process]:
        """The live processes of our group (empty when it is gone or the pid file is stale)."""
        record = record or self.record()
        return group_of(record) if record else []

    def running(self) -> R | None:
        """Our record while any process of the group lives; a stale pid file is removed."""
        record = self.record()
        if record and group_of(record):
            return record
        self.pid_file.unlink(missing_ok=True)
        return None

    def leader_alive(self, record: R) -> bool:
        """Whether the process we started first still runs (its workers may outlive it)."""
        return any(proc.pid == record.pid for proc in group_of(record))

    def log_tail(self, lines: int = 15) -> str:
        """The end of the log, every known secret masked."""
        secrets = self.secrets() if callable(self.secrets) else self.secrets
        return redact(tail(self.log_file, lines), tuple(secrets))

    # --- actions ------------------------------------------------------------------------

    def start(self, launch: Launch) -> R:
        """Start the program and wait until ready; the whole group is stopped when it is not.

        The caller decides first what a running one means (reuse it, refuse, restart).
        """
        refuse_busy(launch.listeners)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        proc = start_group(launch.command, env=launch.env, log_path=self.log_file, cwd=launch.cwd)
        record = self.record_type.of(proc.pid, **launch.fields)
        record.write(self.pid_file)

        def probe() -> str | None:
            if proc.poll() is not None:
                raise UserError(f"{self.name} exited during start-up")
            return launch.ready()

        try:
            wait_ready(probe, timeout=launch.timeout, what=self.name)
        except UserError as exc:
            stopped = "" if proc.poll() is not None else "; stopped it"
            stop_group(record.pgid, grace=self.grace)
            self.pid_file.unlink(missing_ok=True)
            raise UserError(
                f"{exc}{stopped}\n--- last lines of {self.log_file} ---\n{self.log_tail(launch.log_lines)}"
            ) from None
        return record

    def stop(self, *, listeners: Sequence[Listener] = ()) -> str:
        """SIGTERM the whole group, SIGKILL what is left after the grace period; what happened.

        listeners: ports to wait for until they are free again (a restart may take them at once).
        """
        record = self.record()
        if record is None:
            return f"{self.name} is not running"
        if not group_of(record):
            self.pid_file.unlink(missing_ok=True)
            return f"{self.name} is not running (removed the stale pid file of pid {record.pid})"
        if record.pgid == os.getpgrp():  # a record we did not write: signalling it would stop us
            raise UserError(f"{self.pid_file} names this tool's own process group; remove the file")
        how = stop_group(record.pgid, grace=self.grace)
        self.pid_file.unlink(missing_ok=True)
        for listener in listeners:
            wait_until(lambda: port_is_free(listener.host, listener.port), timeout=10)
        return f"stopped {self.name} (pid {record.pid}, {how})"


def refuse_busy(listeners: Sequence[Listener]) -> None:
    """A one-line UserError naming the holder of the first busy port. start() checks too; a caller
    checks first when it has work to skip on a busy port (a database fallback, the S3 it would start)."""
    for listener in listeners:
        if not port_is_free(listener.host, listener.port):
            raise UserError(
                f"port {listener.port} on {listener.host} is in use by {port_holder(listener.port)}; "
                f"stop that or {listener.fix}"
            )


def group_of(record: ProcessRecord) -> list[psutil.Process]:
    """The live members of the recorded group that we started.

    A group id is its leader's pid. While the leader lives, its start time must match the
    record (else the pid was reused and nothing is ours). Once it is gone, Linux gives its
    pid to no new process while the group has members, so members started no earlier than
    our leader are its descendants.
    """
    members = []
    for proc in group_members(record.pgid):
        try:
            started = proc.create_time()
        except psutil.Error:
            continue
        if proc.pid == record.pid and abs(started - record.create_time) > 1.0:
            return []  # the leader's pid now belongs to another program
        if started >= record.create_time - 1.0:
            members.append(proc)
    return members


def uptime(record: ProcessRecord) -> float:
    return time.time() - record.started_at
