"""Processes we start and stop: pid files with identity, process groups, ports, log tails (the parts
core.managed.ManagedProcess is built from)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from tasks.libs.core.waits import wait_until

R = TypeVar("R", bound="ProcessRecord")


@dataclass
class ProcessRecord:
    """What a pid file holds: enough to recognise our process even after pid reuse.

    Subclasses add the typed fields their callers need (the server's port and URL, ...).
    """

    pid: int
    pgid: int
    create_time: float
    started_at: float

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=2)
        os.replace(tmp, path)

    @classmethod
    def read(cls: type[R], path: Path) -> R | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # a corrupt pid file says nothing we can trust

    @classmethod
    def of(cls: type[R], pid: int, **fields) -> R:
        """The record of a live process we just started (its identity read from the OS)."""
        return cls(
            pid=pid,
            pgid=os.getpgid(pid),
            create_time=psutil.Process(pid).create_time(),
            started_at=time.time(),
            **fields,
        )


def start_group(
    cmd: list[str], *, env: dict[str, str], log_path: Path, cwd: Path | None = None, **popen_kwargs
) -> subprocess.Popen:
    """Start cmd as the leader of a new process group, output appended to log_path (mode 0600).

    The group's umask is 0077: whatever it writes (store files, artifacts) is ours alone.
    Call it through core.managed.ManagedProcess, which records, waits for and stops the group.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o077,
            **popen_kwargs,
        )


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in the group; reaps zombies that are our own children."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            _reap(proc.pid)
            continue
        members.append(proc)
    return members


def stop_group(pgid: int, *, grace: float) -> str:
    """SIGTERM the whole group, SIGKILL what is left after grace seconds.

    Returns "terminated", "killed" or "gone" (nothing was running).
    """
    if not group_members(pgid):
        return "gone"
    _signal_group(pgid, signal.SIGTERM)
    if wait_until(lambda: not group_members(pgid), timeout=grace):
        return "terminated"
    _signal_group(pgid, signal.SIGKILL)
    wait_until(lambda: not group_members(pgid), timeout=10)
    return "killed"


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (TIME_WAIT leftovers do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_holder(port: int) -> str:
    """Who listens on the port, as 'pid 123 (cmdline)', or a neutral phrase if unknown."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return "another process"
    for conn in conns:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline())[:80]
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid} ({cmd})"
    return "another process"


# Ports free_port has handed out in this process. Nothing listens on a port between the moment
# it is chosen and the moment its program starts, so the kernel may offer the same port again;
# two listeners of one deployment (a server and its S3) were once given the same port that way.
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now, never one this process was given before."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError(f"the OS offered no port on {host} that this process was not given before")


def free_ports_in_a_row(count: int, host: str = "127.0.0.1") -> int:
    """The first of count consecutive ports that are all free right now (a cluster's replicas)."""
    for _ in range(200):
        first = free_port(host)
        rest = range(first + 1, first + count)
        if first + count <= 65535 and not _handed_out.intersection(rest) and all(port_is_free(host, p) for p in rest):
            _handed_out.update(rest)
            return first
    raise RuntimeError(f"found no {count} consecutive free ports on {host}")


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, as written: redact it before showing it (core.redact)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
