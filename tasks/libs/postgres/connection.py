"""Connections to the configured PostgreSQL: connect, readiness, the database itself, errors."""

from __future__ import annotations

import psycopg2
from psycopg2 import sql

from tasks.libs.core.credentials import known_secrets, postgres_password, postgres_uri
from tasks.libs.core.errors import ConfigError, UserError
from tasks.libs.core.redact import redact
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_ready


def connect(settings: Settings, *, dbname: str | None = None, timeout: int = 3):
    """A psycopg2 connection to the configured database (or dbname on the same server)."""
    pg = settings.postgres
    if pg.provider == "external":
        dsn = postgres_uri(settings, reveal=True).replace("postgresql+psycopg2://", "postgresql://", 1)
        extra = {"dbname": dbname} if dbname else {}
        return psycopg2.connect(dsn, connect_timeout=timeout, **extra)
    return psycopg2.connect(
        host=pg.host,
        port=pg.port,
        user=pg.user,
        dbname=dbname or pg.database,
        password=postgres_password(settings),
        connect_timeout=timeout,
    )


def where(settings: Settings) -> str:
    """host:port of the configured server, or 'the external server' (its URI may hold secrets)."""
    pg = settings.postgres
    return "the external server" if pg.provider == "external" else f"{pg.host}:{pg.port}"


def check_reachable(settings: Settings, *, dbname: str | None = None) -> str | None:
    """None when `SELECT 1` works as the configured user on the database, else why not."""
    try:
        conn = connect(settings, dbname=dbname)
    except psycopg2.Error as exc:
        return explain_error(exc, where(settings), known_secrets(settings))
    except ConfigError as exc:  # no password yet
        return str(exc)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return None
    finally:
        conn.close()


def explain_error(exc: Exception | str, where: str, secrets: tuple[str, ...] = ()) -> str:
    """libpq's multi-line message cut to one phrase that says what went wrong, secrets masked.

    Callers add their own hint (`inv db.start`, `--uri`, ...).
    """
    text = str(exc).strip()
    flat = " ".join(text.split())
    if "Connection refused" in flat or ("could not connect" in flat and "timeout" not in flat):
        return f"nothing answers at {where}"
    if "timeout expired" in flat:
        return f"no answer from {where} (timeout)"
    lines = [line for line in text.splitlines() if line.strip()]
    reason = lines[-1].removeprefix("FATAL:").strip() if lines else type(exc).__name__
    return redact(reason, secrets)  # libpq repeats a malformed DSN, password and all


def wait_for_database(settings: Settings, *, timeout: float) -> None:
    """Wait for the server to take logins, create our database if missing, then `SELECT 1` in it."""

    def probe() -> str | None:
        problem = check_reachable(settings, dbname="postgres")
        if problem and "authentication failed" in problem:
            raise UserError(
                f"PostgreSQL refused the login ({problem}); the data directory was made "
                "with another password: set it, or `inv db.reset --yes --wipe`"
            )
        return problem

    wait_ready(probe, timeout=timeout, what="PostgreSQL")
    ensure_database(settings)
    problem = check_reachable(settings)
    if problem:
        raise UserError(f"PostgreSQL is up but the database is not usable ({problem})")


def ensure_database(settings: Settings) -> bool:
    """Create the configured database if it is missing; True if it was created."""
    conn = connect(settings, dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.postgres.database,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.postgres.database)))
            return True
    finally:
        conn.close()


def recreate_database(settings: Settings) -> None:
    """Drop the configured database (ending its sessions) and create it empty."""
    conn = connect(settings, dbname="postgres")
    conn.autocommit = True
    name = sql.Identifier(settings.postgres.database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(name))
    finally:
        conn.close()
