"""The `local` provider: a PostgreSQL cluster of our own from the machine's server binaries.

The cluster (data, socket and log) lives in <state_dir>/postgres. PostgreSQL refuses to run
as root, so as root it runs as an unprivileged OS user (`postgres.local.os_user`), who must
be able to reach the cluster: when the state dir is under a folder closed to that user
(a checkout under /root, mode 0700), the cluster lives in that user's home instead, in
~<os_user>/mlflow-ops/<state path>-<hash>, and <state_dir>/postgres/cluster says where. A new
state dir at the path of a deleted one (a checkout cloned again) never adopts the old cluster,
whose password is gone: it takes <hash>-2 (-3, ...) and says what it left alone.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import psutil

from tasks.libs.core.credentials import postgres_password
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import port_holder, port_is_free, tail
from tasks.libs.core.settings import Settings
from tasks.libs.core.state import ensure_state_dir
from tasks.libs.postgres.connection import check_reachable, wait_for_database
from tasks.libs.postgres.os_user import PostgresOsUser, server_binaries


class LocalPostgres:
    name = "local"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pg = settings.postgres
        self.os_user = PostgresOsUser(settings.postgres.local.os_user)
        self.state_dir = settings.state_path / "postgres"
        self.orphans: list[Path] = []  # clusters of earlier state dirs at this path (see _cluster_root)
        self.root = self._cluster_root()
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_file = self.root / "postgres.log"

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> str:
        bins = self._binaries()
        if self.is_running():
            wait_for_database(self.settings, timeout=self.pg.start_timeout)
            return f"PostgreSQL already running (reused) on {self.pg.host}:{self.pg.port}"
        if not port_is_free(self.pg.host, self.pg.port):
            raise UserError(
                f"port {self.pg.port} on {self.pg.host} is in use by {port_holder(self.pg.port)}; "
                "stop that or set postgres.port"
            )
        created = not (self.data_dir / "PG_VERSION").is_file()
        if created:
            self._initdb(bins)
        self._clear_stale_lock_files()
        self._prepare_dirs()
        result = self._run(
            [
                str(bins / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(int(self.pg.start_timeout)),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                self._server_options(),
            ]
        )
        if result.returncode != 0:
            raise UserError(
                f"PostgreSQL failed to start (pg_ctl exit {result.returncode})\n"
                f"--- last lines of {self.log_file} ---\n{tail(self.log_file, 15)}"
            )
        wait_for_database(self.settings, timeout=self.pg.start_timeout)
        what = "initialised and started" if created else "started"
        left = "".join(
            f"\nleft alone: {place}, the cluster of an earlier state dir at this path (its password went with it); "
            "remove it when you no longer need its data"
            for place in self.orphans
        )
        return f"PostgreSQL {what} on {self.pg.host}:{self.pg.port} (data: {self.data_dir}){left}"

    def stop(self) -> str:
        if not self.is_running():
            return "PostgreSQL is not running"
        bins = self._binaries()
        timeout = str(int(self.pg.stop_timeout))
        result = self._run([str(bins / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", timeout])
        if result.returncode != 0:
            self._run([str(bins / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"])
            return "PostgreSQL stopped (immediate mode: fast shutdown timed out)"
        return "PostgreSQL stopped"

    def status(self) -> dict:
        pid = self.postmaster_pid()
        return {
            "provider": self.name,
            "running": pid is not None,
            "pid": pid,
            "data_dir": str(self.data_dir),
            "initialised": (self.data_dir / "PG_VERSION").is_file(),
            "address": f"{self.pg.host}:{self.pg.port}",
            "log": str(self.log_file),
            "ready": pid is not None and check_reachable(self.settings) is None,
        }

    def logs(self, lines: int) -> str:
        return tail(self.log_file, lines)

    def wipe(self) -> None:
        """Remove the cluster's data (the server must be stopped); a cluster kept outside the state dir
        goes whole, with the note that pointed at it."""
        if self.root == self.state_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return
        shutil.rmtree(self.root, ignore_errors=True)
        self._location_note.unlink(missing_ok=True)

    # --- state -----------------------------------------------------------------------

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def postmaster_pid(self) -> int | None:
        """The pid of the postmaster serving our data dir, or None (a stale pid file counts as None)."""
        pid = self._pid_in_file()
        return pid if pid is not None and self._is_our_postmaster(pid) else None

    def _pid_in_file(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError, PermissionError):
            return None

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            cmd = proc.cmdline()
            return (
                proc.status() != psutil.STATUS_ZOMBIE
                and "postgres" in Path(cmd[0]).name
                and str(self.data_dir) in " ".join(cmd)
            )
        except (psutil.Error, IndexError):
            return False

    def _clear_stale_lock_files(self) -> None:
        """Lock files left by a dead postmaster (or naming a pid now reused, or a zombie) block a
        start; with no live postmaster of ours they are safe to drop. The data stays."""
        if self.postmaster_pid() is not None:
            return
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        if self.socket_dir.is_dir():  # our own socket directory: nobody else's locks live here
            for leftover in self.socket_dir.glob(".s.PGSQL.*"):
                leftover.unlink(missing_ok=True)

    # --- setup -----------------------------------------------------------------------

    def _binaries(self) -> Path:
        return server_binaries(self.pg.local.bin_dir)

    def _initdb(self, bins: Path) -> None:
        self._prepare_dirs()
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise UserError(
                f"{self.data_dir} is not empty but holds no PostgreSQL cluster; "
                "move it away or run `inv db.reset --yes`"
            )
        pwfile = self.root / ".initdb-pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(postgres_password(self.settings, generate=True) + "\n")  # the cluster's password is born here
        self._chown(pwfile)
        try:
            result = self._run(
                [
                    str(bins / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.pg.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise UserError(f"initdb failed: {result.stderr.strip().splitlines()[-1] if result.stderr else '?'}")

    def _prepare_dirs(self) -> None:
        ensure_state_dir(self.settings)
        user = self._os_user()
        if user and not reachable_by(self.root, user):
            raise UserError(
                f"{self.root} is closed to user {user.pw_name}, who runs PostgreSQL; "
                "set postgres.local.cluster_dir to a folder that user can reach"
            )
        if self.root != self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._location_note.write_text(f"{self.root}\n")
        for folder in (self.root, self.data_dir, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            self._chown(folder)
        self.log_file.touch(mode=0o600)
        self._chown(self.log_file)

    # --- where the cluster lives -----------------------------------------------------

    @property
    def _location_note(self) -> Path:
        return self.state_dir / "cluster"

    def _cluster_root(self) -> Path:
        """config's cluster_dir; else where an earlier start put it; else the state dir, or the OS
        user's home when we are root and that user cannot reach the state dir."""
        if self.pg.local.cluster_dir:
            return Path(self.pg.local.cluster_dir)
        if self._location_note.is_file():
            return Path(self._location_note.read_text().strip())
        user = self._os_user()
        if user is None or reachable_by(self.state_dir, user):
            return self.state_dir
        home = Path(user.pw_dir)
        if not (home.is_dir() and home.stat().st_uid == user.pw_uid and reachable_by(home, user)):
            raise UserError(
                f"{self.state_dir} is closed to user {user.pw_name}, who runs PostgreSQL, and "
                f"their home {home} is not theirs to use; set postgres.local.cluster_dir"
            )
        state = str(self.settings.state_path.resolve())
        slug = re.sub(r"[^A-Za-z0-9_.]+", "-", state.strip("/"))[-40:].lstrip("-")
        digest = hashlib.sha256(state.encode()).hexdigest()[:10]
        # A cluster already there belongs to an earlier state dir at this path (a checkout deleted
        # and cloned again): its password went with that state dir, so it is left alone, never
        # adopted or removed, and this state dir gets the next free place.
        place = home / "mlflow-ops" / f"{slug}-{digest}"
        for n in range(2, 100):
            if not (place / "data" / "PG_VERSION").is_file():
                return place
            self.orphans.append(place)
            place = home / "mlflow-ops" / f"{slug}-{digest}-{n}"
        raise UserError(f"98 clusters of earlier state dirs at {state} under {home / 'mlflow-ops'}; remove them")

    def _server_options(self) -> str:
        options = {
            "port": self.pg.port,
            "listen_addresses": self.pg.host,
            "unix_socket_directories": self.socket_dir,
            **self.pg.local.parameters,
        }
        return " ".join(f"-c {key}={value}" for key, value in options.items())

    # --- running as root -------------------------------------------------------------

    def _os_user(self) -> pwd.struct_passwd | None:
        """The unprivileged account to run as when we are root (Postgres refuses root)."""
        return self.os_user.account()

    def _chown(self, path: Path) -> None:
        self.os_user.chown(path)

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return self.os_user.run(cmd, cwd=self.root)


def reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """True when user may traverse every existing folder from / down to path."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            break  # what does not exist yet we create, for that user
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True
