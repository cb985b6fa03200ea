"""System programs we run (haproxy, pgbouncer, promtool, ...): where they are, or how to get them."""

from __future__ import annotations

import importlib.util
import os
import shutil

from tasks.libs.core.errors import UserError

# Debian puts daemons in /usr/sbin, which is not on every user's PATH.
EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_program(name: str) -> str | None:
    """The program's path: PATH first, then the sbin folders."""
    found = shutil.which(name)
    if found:
        return found
    for folder in EXTRA_DIRS:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def require_program(name: str, package: str) -> str:
    """The program's path, or a one-line UserError saying how to install it."""
    path = find_program(name)
    if path is None:
        raise UserError(f"{name} is not installed: `inv deps` (Debian package {package})")
    return path


def require_module(module: str, why: str) -> None:
    """A one-line UserError unless this interpreter (the one every server we start runs) imports module.

    Checked before a start because the server itself would start and fail later, slowly
    (a missing boto3 is a 500 on every upload after a healthy start; a missing
    prometheus_flask_exporter crashes every worker).
    """
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{why} needs the Python package {module!r}, which is missing: `pip install -e .`")
