"""A streaming standby of the local PostgreSQL, made with pg_basebackup: the servers' read replica.

Facts this relies on (PostgreSQL 15, measured here):
- `initdb --auth=scram-sha-256` already allows `host replication all 127.0.0.1/32`, and
  wal_level=replica and max_wal_senders=10 are the defaults: a role WITH REPLICATION is all the
  primary needs. Base backup plus start took 0.5 s idle, 3.6-4.4 s under load.
- `pg_basebackup -R` writes primary_conninfo, password included, into the standby's
  postgresql.auto.conf (mode 0600, owned by the OS user, in its 0700 data folder).
- The walreceiver's application_name is the standby's cluster_name, which
  synchronous_standby_names names, and which is also the replication slot's name. The slot
  keeps WAL on the primary while the standby is away: it is dropped with the standby.
- MLflow sends every store read without read_only=False to the replica, create_run's
  experiment lookup included. Asynchronous on loopback, a get_run right after create_run
  missed 16-69 of 150-200; with synchronous_commit remote_apply, 0 of 150, at 3-5 ms per
  write. But then every write waits while the standby is down, until
  synchronous_standby_names is cleared: so it is cleared before the standby stops.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

import psutil
from psycopg2 import sql

from tasks.libs.core.credentials import generated_secret
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import port_holder, port_is_free, tail
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_ready
from tasks.libs.postgres.connection import ConnectError, pg_connection
from tasks.libs.postgres.local import LocalPostgres
from tasks.libs.postgres.os_user import last_line, server_binaries

SECRET = "replication_password"


class Standby:
    """The standby's data, socket folder and log sit beside the primary's cluster (same OS user)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg = settings.cluster.read_replica
        self.primary = LocalPostgres(settings)
        self.data_dir = self.primary.root / "standby"
        self.socket_dir = self.primary.root / "standby-run"
        self.log_file = self.primary.root / "standby.log"

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> str:
        """Make the standby if there is none, start it, wait until it streams; then synchronous if asked."""
        if self.running():
            self._wait_streaming()
            self.set_synchronous(self.cfg.synchronous)
            return f"standby already streaming on {self.settings.postgres.host}:{self.cfg.port}; reused"
        bins = server_binaries(self.settings.postgres.local.bin_dir, ("pg_basebackup", "pg_ctl", "pg_controldata"))
        if not port_is_free(self.settings.postgres.host, self.cfg.port):
            raise UserError(
                f"port {self.cfg.port} is in use by {port_holder(self.cfg.port)}; stop that or set cluster.read_replica.port"
            )
        self.primary.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.primary.os_user.chown(self.primary.root)
        made = ""
        if (self.data_dir / "PG_VERSION").is_file() and not self._copy_of_primary(bins):
            shutil.rmtree(self.data_dir, ignore_errors=True)  # a copy of a primary since wiped: useless
        if not (self.data_dir / "PG_VERSION").is_file():
            self._base_backup(bins)
            made = "made with pg_basebackup and "
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.primary.os_user.chown(self.socket_dir)
        self.log_file.touch(mode=0o600)
        self.primary.os_user.chown(self.log_file)
        result = self.primary.os_user.run(
            [str(bins / "pg_ctl"), "start", "-w", "-t", str(int(self.settings.postgres.start_timeout)),
             "-D", str(self.data_dir), "-l", str(self.log_file), "-o", self._options()],
            cwd=self.primary.root,
        )  # fmt: skip
        if result.returncode != 0:
            raise UserError(f"the standby did not start ({last_line(result)})\n{tail(self.log_file, 10)}")
        self._wait_streaming()
        self.set_synchronous(self.cfg.synchronous)
        how = "synchronous (remote_apply)" if self.cfg.synchronous else "asynchronous"
        return f"standby {made}started on {self.settings.postgres.host}:{self.cfg.port}, {how}"

    def stop(self, *, wipe: bool = False) -> list[str]:
        """Clear synchronous mode first (else the primary's writes hang), stop, and with wipe drop
        the slot and the data."""
        messages = []
        if self._primary_answers():
            self.set_synchronous(False)
        if self.running():
            bins = server_binaries(self.settings.postgres.local.bin_dir, ("pg_ctl",))
            result = self.primary.os_user.run(
                [str(bins / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30"],
                cwd=self.primary.root,
            )
            messages.append("standby stopped" if result.returncode == 0 else f"standby: {last_line(result)}")
        if wipe:
            if self._primary_answers() and self.drop_slot():
                messages.append(f"replication slot {self.cfg.name} dropped")
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir, ignore_errors=True)
                messages.append(f"standby data removed ({self.data_dir})")
        return messages

    def running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            proc = psutil.Process(pid)
            return proc.status() != psutil.STATUS_ZOMBIE and str(self.data_dir) in " ".join(proc.cmdline())
        except psutil.Error:
            return False

    # --- the primary's side ----------------------------------------------------------------

    def set_synchronous(self, on: bool) -> None:
        """remote_apply: a commit returns once the standby has applied it (read-your-writes)."""
        with self._primary() as conn, conn.cursor() as cur:
            cur.execute("SHOW synchronous_standby_names")
            wanted = self.cfg.name if on else ""
            if cur.fetchone()[0] == wanted:
                return
            cur.execute("ALTER SYSTEM SET synchronous_standby_names = %s", (wanted,))
            cur.execute("ALTER SYSTEM SET synchronous_commit = %s", ("remote_apply" if on else "on",))
            cur.execute("SELECT pg_reload_conf()")

    def drop_slot(self) -> bool:
        with self._primary() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (self.cfg.name,),
            )
            return cur.rowcount > 0

    def status(self) -> dict[str, Any]:
        """For db.status: the standby as the primary sees it (state, sync, lag) and as it sees itself."""
        out: dict[str, Any] = {"standby": f"{'running' if self.running() else 'stopped'} on port {self.cfg.port}"}
        try:
            with self._primary() as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT state, sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                    "EXTRACT(EPOCH FROM replay_lag)::float FROM pg_stat_replication WHERE application_name = %s",
                    (self.cfg.name,),
                )
                row = cur.fetchone()
                cur.execute("SHOW synchronous_standby_names")
                sync_names = cur.fetchone()[0]
        except UserError as exc:  # the primary does not answer
            return {**out, "standby_problem": str(exc)}
        if row:
            state, sync, lag_bytes, lag_s = row
            out.update(
                standby_state=f"{state} ({sync})",
                standby_replay_lag_bytes=lag_bytes,
                # an idle primary sends nothing: no lag time is known, and none is due
                standby_replay_lag_s=round(lag_s, 3) if lag_s is not None else 0.0,
            )
        else:
            out["standby_state"] = "not streaming"
        if sync_names and not row:
            out["standby_warning"] = (
                f"synchronous_standby_names is {sync_names!r} with no standby streaming: writes wait; "
                "`inv cluster.up` or `inv cluster.down`"
            )
        return out

    # --- helpers -----------------------------------------------------------------------------

    def _base_backup(self, bins) -> None:
        password = generated_secret(self.settings, SECRET)
        with self._primary() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.cfg.replication_user,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(
                sql.SQL(verb + " ROLE {} WITH REPLICATION LOGIN PASSWORD %s").format(
                    sql.Identifier(self.cfg.replication_user)
                ),
                (password,),
            )
            # a slot left by a standby whose data was removed would make -C fail
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (self.cfg.name,),
            )
        shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-made copy from an interrupted backup
        pg = self.settings.postgres
        result = self.primary.os_user.run(
            [str(bins / "pg_basebackup"), "-h", pg.host, "-p", str(pg.port), "-U", self.cfg.replication_user,
             "-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast", "-C", "-S", self.cfg.name],
            cwd=self.primary.root,
            env={"PGPASSWORD": password},  # never argv
        )  # fmt: skip
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise UserError(f"pg_basebackup failed: {last_line(result)}")

    def _copy_of_primary(self, bins) -> bool:
        """Whether the standby's data was copied from this primary (the same system identifier)."""
        result = self.primary.os_user.run([str(bins / "pg_controldata"), str(self.data_dir)], cwd=self.primary.root)
        mine = next(
            (line.split(":", 1)[1].strip() for line in result.stdout.splitlines() if "system identifier" in line), None
        )
        with self._primary() as conn, conn.cursor() as cur:
            cur.execute("SELECT system_identifier::text FROM pg_control_system()")
            return mine == cur.fetchone()[0]

    def _options(self) -> str:
        options = {
            "port": self.cfg.port,
            "listen_addresses": self.settings.postgres.host,
            "unix_socket_directories": self.socket_dir,
            "hot_standby": "on",
            "cluster_name": self.cfg.name,
            # a hot standby needs at least the primary's max_connections and friends
            **self.settings.postgres.local.parameters,
        }
        return " ".join(f"-c {key}={value}" for key, value in options.items())

    def _wait_streaming(self) -> None:
        def probe() -> str | None:
            with self._primary() as conn, conn.cursor() as cur:
                cur.execute("SELECT state FROM pg_stat_replication WHERE application_name = %s", (self.cfg.name,))
                row = cur.fetchone()
            return None if row and row[0] == "streaming" else f"replication state {row[0] if row else 'none'}"

        wait_ready(probe, timeout=self.settings.postgres.start_timeout, what="the standby")

    @contextlib.contextmanager
    def _primary(self) -> Iterator[Any]:
        """An autocommit connection to the primary (ALTER SYSTEM takes no transaction), closed at the end."""
        try:
            with pg_connection(self.settings, dbname="postgres", autocommit=True) as conn:
                yield conn
        except ConnectError as exc:
            raise UserError(f"the primary PostgreSQL is not usable ({exc.reason})") from None

    def _primary_answers(self) -> bool:
        try:
            with self._primary():
                return True
        except UserError:
            return False


def with_standby(settings: Settings, state: dict[str, Any]) -> dict[str, Any]:
    """db.status' table plus the standby's state and replay lag, when one is configured or was made."""
    if settings.postgres.provider not in ("local", "auto"):
        return state
    standby = Standby(settings)
    if settings.cluster.read_replica.enabled or standby.data_dir.exists():
        state = {**state, **standby.status()}
    return state
