"""What a dead dockerd of ours leaves on the host besides its bridge: the shims and container
processes named by its exec root, and mounts under its folders."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil


def kill_exec_root_processes(exec_root: str) -> int:
    """Shims started by our containerd name its socket (under our exec root) on their command
    line; each container's init pid is in a file under our exec root. Both are ours by identity."""
    victims: set[int] = set()
    for pid_file in Path(exec_root).glob("containerd/daemon/io.containerd.runtime.v2.task/*/*/init.pid"):
        with contextlib.suppress(OSError, ValueError):
            victims.add(int(pid_file.read_text().strip()))
    marker = f"{exec_root}/containerd/"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(marker in part for part in proc.info["cmdline"] or []):
                victims.add(proc.info["pid"])
    killed = 0
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def unmount_under(folders: list[Path]) -> int:
    roots = [str(f.resolve()) for f in folders]
    mounts = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if any(point == root or point.startswith(root + "/") for root in roots):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    return len(mounts)
