"""`deps` task: the system packages the tests and the cluster need, installed only when missing."""

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from tasks.libs.core.processes import port_holder, port_is_free
from tasks.libs.core.programs import find_program
from tasks.libs.postgres.binaries import find_binaries

CHROMIUM = "/usr/bin/chromium"
# Debian package -> the program that shows it is installed.
CLUSTER_PACKAGES = {
    "haproxy": "haproxy",
    "pgbouncer": "pgbouncer",
    "prometheus": "promtool",  # only promtool is used; the package brings the server too
    "prometheus-postgres-exporter": "prometheus-postgres-exporter",
    "redis-server": "redis-server",  # MLflow's job queues across the cluster's replicas
}
# Where Debian's own services of those packages listen when systemd starts them after the
# install; the tool never uses these ports and never touches those services.
SYSTEM_SERVICE_PORTS = {
    6379: "redis-server",
    6432: "pgbouncer",
    9090: "prometheus",
    9187: "prometheus-postgres-exporter",
}
# `--docker`: a Docker engine for engine.start (dockerd, containerd, runc) and mmdebstrap for the
# Debian base image that stands in where no registry answers.
DOCKER_PACKAGES = {"docker.io": "dockerd", "mmdebstrap": "mmdebstrap"}
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def missing_packages(docker: bool = False) -> list[str]:
    """Debian packages still needed: PostgreSQL server binaries, Chromium for the UI check (and NSS's
    certutil, with which it is made to trust a private CA over https), systemd for `systemd-analyze
    verify` on exported units (a fresh Debian container lacks it), and HAProxy, PgBouncer, promtool,
    postgres_exporter and Redis for the cluster and its monitoring; with docker, docker.io and mmdebstrap."""
    missing = []
    if find_binaries(None) is None:
        missing.append("postgresql")
    if not os.path.exists(CHROMIUM):
        missing.append("chromium")
    if find_program("certutil") is None:
        missing.append("libnss3-tools")
    if find_program("systemd-analyze") is None:
        missing.append("systemd")
    missing += [package for package, program in CLUSTER_PACKAGES.items() if find_program(program) is None]
    if docker:
        missing += [package for package, program in DOCKER_PACKAGES.items() if find_program(program) is None]
    return missing


@contextlib.contextmanager
def no_service_starts() -> Iterator[None]:
    """Installing docker.io would start Debian's own dockerd on /var/run/docker.sock (and apt starts
    other packages' daemons too): a policy-rc.d that refuses (invoke-rc.d(8)) for the install only,
    unless the machine already has one."""
    if POLICY_RC.exists() or os.geteuid() != 0:
        yield
        return
    POLICY_RC.write_text("#!/bin/sh\n# written by mlflow-ops' `inv deps` for one apt-get install\nexit 101\n")
    POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC.unlink(missing_ok=True)


@task(
    help={
        "dry_run": "only print what would be installed",
        "docker": "also a Docker engine (docker.io) and mmdebstrap, for engine.start, deploy.up and the engine tests",
    }
)
def deps(c, dry_run=False, docker=False):
    """Install PostgreSQL server binaries, Chromium (+ certutil), systemd-analyze, HAProxy, PgBouncer, Prometheus tools, Redis (and Docker) when missing."""
    missing = missing_packages(docker=docker)
    if not missing:
        extra = ", docker.io, mmdebstrap" if docker else ""
        print(
            "system packages present: postgresql server binaries, chromium, certutil, systemd-analyze, "
            + ", ".join(CLUSTER_PACKAGES)
            + extra
        )
        return
    if dry_run:
        print("would install: " + " ".join(missing))
        return
    if not shutil.which("apt-get"):
        raise Exit(f"error: missing {', '.join(missing)} and no apt-get here; install them with your package manager")
    sudo = "" if os.geteuid() == 0 else "sudo "
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    c.run(f"{sudo}apt-get update -qq", env=env)
    # No recommends: prometheus would bring prometheus-node-exporter (a daemon on 9100) and more.
    with no_service_starts():
        c.run(f"{sudo}apt-get install -y -qq --no-install-recommends {' '.join(missing)}", env=env)
    for port, service in SYSTEM_SERVICE_PORTS.items():
        if not port_is_free("127.0.0.1", port):
            print(
                f"note: {port_holder(port)} listens on {port} (Debian's {service} service, started by apt); "
                "mlflow-ops never uses it, and leaves it alone"
            )
