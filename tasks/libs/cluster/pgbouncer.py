"""PgBouncer (Debian's pgbouncer 1.18) in transaction mode between the replicas and PostgreSQL.

Facts this relies on (measured here):
- PgBouncer refuses root. Started by root with `-u postgres` it works, but it switches user
  before it reads its auth file or opens a log, so its folder and files belong to that user
  (they live beside the local PostgreSQL cluster, where that user can reach them).
- auth_type scram-sha-256 with the user's SCRAM verifier from pg_authid in the auth file:
  clients log in with the real password and PgBouncer logs in to PostgreSQL with the same
  proof, so no plaintext password is on disk. The verifier changes with the password: the
  file is rewritten at every start. Reading pg_authid needs a superuser.
- MLflow 3.17 (SQLAlchemy 2.1, psycopg2) works through pool_mode transaction, including the
  first start's schema creation: psycopg2 uses no server-side prepared statements and MLflow
  sets nothing per session on PostgreSQL.
- 2 replicas x 2 workers and 8 clients through a pool of 4: PostgreSQL saw at most 4
  connections (16 without PgBouncer), at 0.93x the throughput.
- In the foreground it logs to stderr (and to logfile if one is set): our log gets stderr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from tasks.libs.cluster.plan import cluster_dir
from tasks.libs.core.credentials import known_secrets
from tasks.libs.core.errors import UserError
from tasks.libs.core.managed import Launch, Listener, ManagedProcess
from tasks.libs.core.processes import ProcessRecord
from tasks.libs.core.programs import require_program
from tasks.libs.core.settings import Settings
from tasks.libs.postgres.connection import ConnectError, libpq_dsn, libpq_params, pg_connection
from tasks.libs.postgres.local import LocalPostgres
from tasks.libs.postgres.os_user import PostgresOsUser

# Kept free for db.status, inspect, the checks and a psql shell.
TOOL_RESERVE = 5


@dataclass
class PgBouncerRecord(ProcessRecord):
    port: int
    pool_size: int


def connection_budget(max_connections: int, superuser_reserved: int) -> int:
    """Connections the MLflow servers may use (walsenders do not count since PostgreSQL 12)."""
    return max(1, max_connections - superuser_reserved - TOOL_RESERVE)


def server_limits(conn) -> tuple[int, int]:
    """(max_connections, superuser_reserved_connections) of the server behind conn."""
    with conn.cursor() as cur:
        cur.execute("SHOW max_connections")
        max_connections = int(cur.fetchone()[0])
        cur.execute("SHOW superuser_reserved_connections")
        reserved = int(cur.fetchone()[0])
    return max_connections, reserved


def pool_sizes(settings: Settings, *, budget: int, worst_case_clients: int, cpus: int) -> dict[str, int]:
    """PostgreSQL side: a small pool (transaction pooling peaks near 2 x cores), never above the
    budget. Client side: room for every replica's SQLAlchemy pools when full, so that no MLflow
    connect is refused."""
    cfg = settings.cluster.pgbouncer
    server_pool = cfg.pool_size or max(2, min(budget, 2 * cpus))
    if server_pool > budget:
        raise UserError(
            f"cluster.pgbouncer.pool_size {server_pool} is more than PostgreSQL can give the servers ({budget}: "
            f"max_connections minus reserved minus {TOOL_RESERVE}); lower it"
        )
    return {
        "default_pool_size": server_pool,
        "max_db_connections": server_pool,
        "reserve_pool_size": 0,
        "max_client_conn": cfg.max_client_conn or worst_case_clients + 10,
    }


def scram_secret(conn, user: str) -> str:
    """The user's SCRAM verifier from pg_authid (a superuser connection)."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,))
            row = cur.fetchone()
    except psycopg2.errors.InsufficientPrivilege:
        raise UserError(
            f"PgBouncer passes {user}'s SCRAM secret on, which only a superuser may read from pg_authid; "
            "make the user a superuser or turn cluster.pgbouncer off"
        ) from None
    if not row or not row[0] or not str(row[0]).startswith("SCRAM-SHA-256$"):
        raise UserError(f"{user} has no SCRAM-SHA-256 password in pg_authid; PgBouncer needs password_encryption scram")
    return str(row[0])


def render_ini(settings: Settings, *, auth_file: Path, sizes: dict[str, int]) -> str:
    """pgbouncer.ini: one database, the primary's, under its own name."""
    cfg = settings.cluster.pgbouncer
    server = libpq_params(settings, password=False)  # PgBouncer logs in with the auth_file's secret
    lines = [
        "; written by mlflow-ops cluster.up; regenerated on every start",
        "[databases]",
        f"{server['dbname']} = " + libpq_dsn({key: server[key] for key in ("host", "port", "dbname") if key in server}),
        "",
        "[pgbouncer]",
        f"listen_addr = {cfg.host}",
        f"listen_port = {cfg.port}",
        "unix_socket_dir =",  # TCP only: no socket file in /tmp or /var/run
        "auth_type = scram-sha-256",
        f"auth_file = {auth_file}",
        "pool_mode = transaction",
        *(f"{key} = {value}" for key, value in sizes.items()),
        "server_reset_query =",  # transaction pooling: nothing session-level to reset
        "ignore_startup_parameters = extra_float_digits,options",
        f"admin_users = {server.get('user', '')}",
        f"stats_users = {server.get('user', '')}",
        "log_connections = 0",  # one line per login and logout otherwise
        "log_disconnections = 0",
        "logfile =",  # stderr goes to our log
        "pidfile =",  # our pid file is the record
    ]
    return "\n".join(lines) + "\n"


class PgBouncer:
    """Our pgbouncer. Config beside the local PostgreSQL cluster, pid file and log in <state>/cluster."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg = settings.cluster.pgbouncer
        self.os_user = PostgresOsUser(settings.postgres.local.os_user)
        self.root = LocalPostgres(settings).root / "pgbouncer"
        self.ini = self.root / "pgbouncer.ini"
        self.auth_file = self.root / "userlist.txt"
        self.process = ManagedProcess(
            "PgBouncer",
            pid_file=cluster_dir(settings) / "pgbouncer.pid",
            log_file=cluster_dir(settings) / "pgbouncer.log",
            record=PgBouncerRecord,
            secrets=lambda: known_secrets(settings),
        )

    def start(self, *, worst_case_clients: int) -> str:
        current = self.running()
        if current:
            return f"PgBouncer already running on {self.cfg.host}:{self.cfg.port} (pid {current.pid}); reused"
        binary = require_program("pgbouncer", "pgbouncer")
        with pg_connection(self.settings, dbname="postgres") as conn:
            budget = connection_budget(*server_limits(conn))
            secret = scram_secret(conn, libpq_params(self.settings, password=False).get("user", ""))
        sizes = pool_sizes(
            self.settings, budget=budget, worst_case_clients=worst_case_clients, cpus=os.cpu_count() or 2
        )
        user = libpq_params(self.settings, password=False).get("user", "")
        self._write(self.ini, render_ini(self.settings, auth_file=self.auth_file, sizes=sizes))
        self._write(self.auth_file, f'"{user}" "{secret}"\n')
        account = self.os_user.account()
        cmd = [binary, *(["-u", account.pw_name] if account else []), str(self.ini)]
        launch = Launch(
            command=cmd,
            env={"PATH": os.environ.get("PATH", "")},
            cwd=self.root,
            ready=self.login_problem,
            timeout=20,
            listeners=[Listener(self.cfg.host, self.cfg.port, "set cluster.pgbouncer.port")],
            fields=dict(port=self.cfg.port, pool_size=sizes["default_pool_size"]),
        )
        self.process.start(launch)
        return (
            f"PgBouncer started on {self.cfg.host}:{self.cfg.port}: transaction pooling, "
            f"{sizes['default_pool_size']} PostgreSQL connections for up to {sizes['max_client_conn']} clients"
        )

    def stop(self) -> str:
        # SIGTERM is an immediate shutdown in 1.18: the replicas are stopped before it.
        return self.process.stop()

    def running(self) -> PgBouncerRecord | None:
        return self.process.running()

    def connect(self, dbname: str | None = None, *, autocommit: bool = False):
        """A login through PgBouncer as the configured user (dbname pgbouncer: its admin console), closed
        at the end of the block."""
        return pg_connection(
            self.settings, host=self.cfg.host, port=self.cfg.port, dbname=dbname, autocommit=autocommit
        )

    def login_problem(self) -> str | None:
        try:
            with self.connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
            return None
        except ConnectError as exc:
            return exc.reason

    def show(self, what: str = "POOLS") -> list[dict[str, Any]]:
        """SHOW POOLS / STATS / CLIENTS on the admin console."""
        with self.connect("pgbouncer", autocommit=True) as conn, conn.cursor() as cur:  # it takes no transactions
            cur.execute(f"SHOW {what}")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def _write(self, path: Path, text: str) -> None:
        """A 0600 file of the OS user's in a 0700 folder of theirs (PgBouncer reads it after setuid)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.os_user.chown(self.root)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        self.os_user.chown(path)
