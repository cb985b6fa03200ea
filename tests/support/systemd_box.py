"""A host to run the units `deploy.systemd` writes under a real systemd: a container with systemd as
PID 1, the MLflow venv from the wheelhouse (the MLflow image's /opt/mlflow) and Debian's PostgreSQL.

The image is the MLflow image plus systemd and postgresql-15 (one layer more: the venv is shared).
The container needs what systemd needs of a host: every capability, no seccomp or AppArmor filter,
its own cgroup namespace, /run and /run/lock as tmpfs. `--privileged` cannot be used on machines
whose root lacks a capability in its bounding set (CAP_SYS_RESOURCE here): runc then refuses to
create the container ("unable to apply caps"). So the box asks for ALL capabilities less those the
host does not have, which is what --privileged would give where it works, minus the device access.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
from docker.errors import NotFound

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_ready
from tasks.libs.engine import images

LABEL = "io.mlflow-ops.role"
ROLE = "systemd-box"
DOCKERFILE = """\
# A host with systemd as PID 1 for mlflow-ops' systemd units: the MLflow image + systemd + PostgreSQL 15.
ARG BASE
FROM ${BASE}
USER root
RUN set -eu; apt-get update; \\
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd systemd-sysv dbus postgresql-15; \\
    rm -rf /var/lib/apt/lists/*
ENV container=docker
STOPSIGNAL SIGRTMIN+3
WORKDIR /
CMD ["/sbin/init"]
"""
# Capability names as Docker spells them, by their number in the kernel (capability.h).
CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]

Say = Callable[[str], None]


def systemd_image(settings: Settings, client: docker.DockerClient, mlflow_image: str, say: Say) -> str:
    """mlflow-ops/systemd-box:<key>, built on the MLflow image (cached by content)."""
    base_id = images.image_id(client, mlflow_image)
    if base_id is None:
        raise UserError(f"image {mlflow_image} is missing: build it first (inv deploy.image)")
    key = images.content_key(DOCKERFILE, base_id)
    tag = f"mlflow-ops/systemd-box:{key[:12]}"
    if images.image_id(client, tag):
        return tag
    say(f"building {tag}: {mlflow_image} + systemd + PostgreSQL")
    images.build(
        client,
        tag,
        {"Dockerfile": DOCKERFILE.encode()},
        key=key,
        say=say,
        timeout=settings.engine.images.build_timeout,
        buildargs={"BASE": mlflow_image},
    )
    return tag


def missing_capabilities() -> list[str]:
    """Capabilities the host's bounding set lacks (a container cannot have them either)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            bits = int(line.split()[1], 16)
            return [name for i, name in enumerate(CAPABILITIES) if not bits >> i & 1]
    return []


class SystemdBox:
    """A running container with systemd as PID 1; exec runs commands in it."""

    def __init__(self, client: docker.DockerClient, image: str, name: str, *, ports: dict[str, tuple[str, int]]):
        self.client = client
        self.name = name
        with contextlib.suppress(NotFound):
            client.containers.get(name).remove(force=True)
        self.container = client.containers.run(
            image,
            name=name,
            detach=True,
            labels={LABEL: ROLE},
            cap_add=["ALL"],
            cap_drop=missing_capabilities(),
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="private",
            tmpfs={"/run": "", "/run/lock": ""},
            ports=ports,
            stop_signal="SIGRTMIN+3",
        )

    def wait_booted(self, timeout: float = 120) -> None:
        def probe() -> str | None:
            self.container.reload()
            if self.container.status != "running":
                raise UserError(f"the systemd container exited: {self.logs()}")
            state = self.exec("systemctl", "is-system-running", check=False).strip()
            return None if state in ("running", "degraded") else f"systemd says {state or 'nothing'}"

        wait_ready(probe, timeout=timeout, what="systemd in the container", interval=0.5)

    def exec(self, *argv: str, check: bool = True, user: str = "root") -> str:
        code, out = self.container.exec_run(list(argv), user=user)
        text = out.decode("utf-8", "replace")
        if check and code != 0:
            raise UserError(f"`{' '.join(argv)}` failed in {self.name} ({code}): {text.strip()[-800:]}")
        return text

    def put(self, path: str, content: bytes, mode: int = 0o644) -> None:
        """Write one file into the container (its folder must exist)."""
        folder, _, name = path.rpartition("/")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), mode, int(time.time())
            tar.addfile(info, io.BytesIO(content))
        if not self.container.put_archive(folder or "/", buf.getvalue()):
            raise UserError(f"could not write {path} into {self.name}")

    def logs(self) -> str:
        return self.container.logs(tail=20).decode("utf-8", "replace")

    def remove(self) -> None:
        with contextlib.suppress(NotFound):
            self.container.remove(force=True)
