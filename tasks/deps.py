"""`deps` task: the system packages the tests need, installed only when missing."""

import os
import shutil

from invoke import task
from invoke.exceptions import Exit

from tasks.libs.postgres.binaries import find_binaries

CHROMIUM = "/usr/bin/chromium"


def missing_packages() -> list[str]:
    """Debian packages still needed: PostgreSQL server binaries, Chromium for the UI check, and
    systemd for `systemd-analyze verify` on exported units (a fresh Debian container lacks it)."""
    missing = []
    if find_binaries(None) is None:
        missing.append("postgresql")
    if not os.path.exists(CHROMIUM):
        missing.append("chromium")
    if shutil.which("systemd-analyze") is None:
        missing.append("systemd")
    return missing


@task(help={"dry_run": "only print what would be installed"})
def deps(c, dry_run=False):
    """Install PostgreSQL server binaries, Chromium and systemd (systemd-analyze) with apt-get when missing."""
    missing = missing_packages()
    if not missing:
        print("system packages present: postgresql server binaries, chromium, systemd-analyze")
        return
    if dry_run:
        print("would install: " + " ".join(missing))
        return
    if not shutil.which("apt-get"):
        raise Exit(f"error: missing {', '.join(missing)} and no apt-get here; install them with your package manager")
    sudo = "" if os.geteuid() == 0 else "sudo "
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    c.run(f"{sudo}apt-get update -qq", env=env)
    c.run(f"{sudo}apt-get install -y -qq {' '.join(missing)}", env=env)
