"""PostgreSQL's programs run as root's stand-in: the unprivileged OS user, and where the binaries are.

PostgreSQL (and PgBouncer) refuse to run as root, so as root every program of theirs runs as
`postgres.local.os_user`, and what they must read or write belongs to that user. Used by the
local provider, the streaming standby and PgBouncer.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from tasks.libs.core.errors import UserError
from tasks.libs.postgres.binaries import SERVER_TOOLS, find_binaries


class PostgresOsUser:
    """The account PostgreSQL's programs run as when we are root (None when we are not root)."""

    def __init__(self, name: str):
        self.name = name

    def account(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(self.name)
        except KeyError:
            raise UserError(
                f"running as root, PostgreSQL needs an unprivileged OS user; "
                f"{self.name!r} does not exist (create it or set postgres.local.os_user)"
            ) from None

    def chown(self, path: Path) -> None:
        """Hand path to that user (nothing to do when we are not root)."""
        user = self.account()
        if user:
            os.chown(path, user.pw_uid, user.pw_gid)

    def run(self, cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """cmd as that user, with a minimal environment plus env (a password travels there, never argv)."""
        user = self.account()
        base = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        # start_new_session: a postmaster must not die with our terminal or our process group.
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env={**base, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )


def server_binaries(bin_dir: str | None, tools: tuple[str, ...] = SERVER_TOOLS) -> Path:
    """The folder with every one of tools, or a one-line UserError saying how to get them."""
    bins = find_binaries(bin_dir, tools=tools)
    if bins is None:
        raise UserError(
            f"PostgreSQL server binaries ({', '.join(tools)}) not found: "
            "`apt-get install postgresql` or set postgres.local.bin_dir"
        )
    return bins


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    """The line of a failed PostgreSQL program that says why."""
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"
