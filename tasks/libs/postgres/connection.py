"""PostgreSQL: the one DSN builder, the one connection context manager, CREATE / DROP DATABASE, errors.

- `libpq_params` turns the settings' SQLAlchemy URI (postgresql+psycopg2://...) into libpq's
  keywords, with dbname / host / port overrides; `libpq_dsn` and `libpq_url` write them as a
  conninfo string or a postgresql:// URL for programs that take one of those. A password
  never goes on a command line: password=False leaves it out, and the caller hands it over in
  PGPASSWORD (or another environment variable).
- `pg_connection` is every psycopg2 connection we open: closed at the end of the block.
  psycopg2's own `with conn:` only ends a transaction and never closes, so it is not used.
- `create_database` / `drop_database`: identifiers quoted with psycopg2.sql.Identifier,
  outside a transaction; a drop ends the database's sessions (WITH (FORCE)).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from urllib.parse import quote, urlencode

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from psycopg2.extensions import make_dsn
from sqlalchemy.engine import URL, make_url

from tasks.libs.core.credentials import known_secrets, postgres_uri
from tasks.libs.core.errors import ConfigError, UserError
from tasks.libs.core.redact import redact
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_ready


class ConnectError(UserError):
    """No connection could be made; `reason` is libpq's phrase (explain_error), secrets masked."""

    def __init__(self, reason: str, where: str):
        super().__init__(f"cannot reach PostgreSQL ({reason}); `inv db.start` first")
        self.reason = reason
        self.where = where


# --- the DSN --------------------------------------------------------------------------------


def libpq_params(
    settings: Settings,
    *,
    dbname: str | None = None,
    host: str | None = None,
    port: int | None = None,
    password: bool = True,
) -> dict[str, str]:
    """libpq keywords for the configured database (user, password, host, port, dbname and the URI's
    query, e.g. sslmode), from the settings' SQLAlchemy URI; overrides replace what it says.

    password=False leaves the password out (and needs none: nothing fails before `inv db.start`
    generated it): for anything that may reach argv, a file or a message.
    """
    uri = postgres_uri(settings, reveal=password)  # reveal=False: *** in place of the password
    return _uri_params(uri, dbname=dbname, host=host, port=port, password=password)


def _uri_params(
    uri: str | URL,
    *,
    dbname: str | None = None,
    host: str | None = None,
    port: int | None = None,
    password: bool = True,
) -> dict[str, str]:
    """libpq keywords from any postgresql[+driver]:// URI (percent-escapes decoded), with overrides."""
    url = make_url(uri) if isinstance(uri, str) else uri
    params = {
        "host": host or url.host,
        "port": str(port or url.port or "") or None,
        "user": url.username,
        "password": url.password if password else None,
        "dbname": dbname or url.database,
    }
    # what the URI's query sets (sslmode, options, application_name, ...): libpq keywords too
    query = {key: value if isinstance(value, str) else value[-1] for key, value in url.query.items()}
    return {key: str(value) for key, value in {**query, **params}.items() if value}


def libpq_dsn(params: Mapping[str, str]) -> str:
    """A conninfo string (key=value, quoted where needed) for psql, pg_dump and PgBouncer's ini."""
    return make_dsn(**params)


def libpq_url(params: Mapping[str, str]) -> str:
    """A postgresql:// URL, every part percent-quoted, for programs that parse only URLs (lib/pq)."""
    rest = dict(params)
    user, password = quote(rest.pop("user", ""), safe=""), quote(rest.pop("password", ""), safe="")
    host, port = rest.pop("host", ""), rest.pop("port", "")
    dbname = quote(rest.pop("dbname", ""), safe="")
    login = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    server = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return f"postgresql://{login}{server}/{dbname}" + (f"?{urlencode(rest)}" if rest else "")


# --- connections ----------------------------------------------------------------------------


@contextlib.contextmanager
def pg_connection(
    settings: Settings,
    *,
    dbname: str | None = None,
    host: str | None = None,
    port: int | None = None,
    timeout: int = 3,
    autocommit: bool = False,
) -> Iterator[PgConnection]:
    """A psycopg2 connection to the configured server (or dbname / host:port), closed at the end.

    autocommit=False: the block is one transaction, committed when the block ends normally,
    rolled back when it raises. autocommit=True: each statement commits on its own, as
    CREATE / DROP DATABASE, VACUUM, ALTER SYSTEM and PgBouncer's console need.
    A failed connect raises ConnectError (its `reason` says why, secrets masked); errors
    inside the block come through as psycopg2 raised them.
    """
    params = libpq_params(settings, dbname=dbname, host=host, port=port)
    try:
        conn = psycopg2.connect(**{"connect_timeout": str(timeout), **params})  # the URI's own wins
    except psycopg2.Error as exc:
        shown = f"{host or params.get('host', 'localhost')}:{port or params.get('port', 5432)}"
        place = shown if host or port else where(settings)
        raise ConnectError(explain_error(exc, place, known_secrets(settings)), place) from None
    try:
        conn.autocommit = autocommit
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
        raise
    finally:
        conn.close()


def where(settings: Settings) -> str:
    """host:port of the configured server, or 'the external server' (its URI may hold secrets)."""
    pg = settings.postgres
    return "the external server" if pg.provider == "external" else f"{pg.host}:{pg.port}"


def check_reachable(settings: Settings, *, dbname: str | None = None) -> str | None:
    """None when `SELECT 1` works as the configured user on the database, else why not."""
    try:
        with pg_connection(settings, dbname=dbname) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return None
    except ConnectError as exc:
        return exc.reason
    except ConfigError as exc:  # no password yet
        return str(exc)


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


# --- databases ------------------------------------------------------------------------------


def database_exists(settings: Settings, name: str) -> bool:
    with pg_connection(settings, dbname="postgres", timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cur.fetchone() is not None


def create_database(
    settings: Settings, name: str, *, template: str | None = None, replace: bool = False, if_missing: bool = False
) -> bool:
    """CREATE DATABASE name [TEMPLATE template] on the configured server; True if it was created.

    replace drops an existing one first, ending its sessions; if_missing leaves an existing one
    alone. Runs outside a transaction (autocommit), as PostgreSQL requires.
    """
    try:
        with pg_connection(settings, dbname="postgres", timeout=10, autocommit=True) as conn, conn.cursor() as cur:
            if if_missing:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    return False
            if replace:
                cur.execute(_drop(name))
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            cur.execute(statement)
            return True
    except psycopg2.errors.DuplicateDatabase:
        if if_missing:  # made by someone else between the look and the CREATE
            return False
        raise UserError(f"cannot create database {name}: it already exists") from None
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "; grant the user CREATEDB" if "permission" in reason else ""
        raise UserError(f"cannot create database {name} ({reason}){hint}") from None


def drop_database(settings: Settings, name: str) -> None:
    """DROP DATABASE IF EXISTS name WITH (FORCE): its sessions are ended first."""
    with pg_connection(settings, dbname="postgres", timeout=10, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(_drop(name))


def _drop(name: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


def ensure_database(settings: Settings) -> bool:
    """Create the configured database if it is missing; True if it was created."""
    return create_database(settings, settings.postgres.database, if_missing=True)


def recreate_database(settings: Settings) -> None:
    """Drop the configured database (ending its sessions) and create it empty."""
    create_database(settings, settings.postgres.database, replace=True)
