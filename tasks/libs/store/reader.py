"""Read-only access to an MLflow store (SQLite file or PostgreSQL) through one SQLAlchemy connection.

Nothing here writes: SQLite is opened with mode=ro (or immutable=1, see _unopened_wal) and
PostgreSQL runs every query in one READ ONLY, REPEATABLE READ transaction that is rolled back.
Tables, columns and keys come from `sqlalchemy.inspect()`, the same on both dialects.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, Connection, Inspector, make_url
from sqlalchemy.exc import ArgumentError, CompileError, DBAPIError

from tasks.libs.core.databases import connect_sqlite_readonly, engine_for, sqlite_journal_mode
from tasks.libs.core.errors import UserError
from tasks.libs.core.redact import mask_uri
from tasks.libs.postgres.connection import explain_error

# Tables every MLflow tracking store has; missing ones mean "not an MLflow store".
MLFLOW_CORE_TABLES = ("alembic_version", "experiments", "runs")
APPLICATION_NAME = "mlflow-ops inspect"
PG_LIMITS = "-c lock_timeout=10s -c statement_timeout=300s"
DEFAULT_LIMIT = 50  # rows a list of findings shows at most; totals always count all


class UnsupportedStore(UserError):
    """A store this reader cannot read at all (another backend, an in-memory SQLite)."""


@dataclass(frozen=True)
class ForeignKey:
    table: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    name: str = ""
    parent_schema: str | None = None  # None: the store's own schema


class StoreReader:
    """Queries with :name parameters on one read-only connection; rows come back as tuples."""

    def __init__(self, connection: Connection, shown_uri: str, label: str, sqlite_path: Path | None = None):
        self.connection = connection
        self.dialect: str = connection.dialect.name  # "sqlite" | "postgresql"
        self.shown_uri = shown_uri  # masked, safe to print
        self.label = label  # the file, or "PostgreSQL host:port/db": for one-line messages
        self.sqlite_path = sqlite_path

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return [tuple(r) for r in self.connection.execute(text(sql), params or {})]

    def dicts(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [dict(r) for r in self.connection.execute(text(sql), params or {}).mappings()]

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.connection.execute(text(sql), params or {}).scalar()

    def quote(self, identifier: str) -> str:
        return self.connection.dialect.identifier_preparer.quote_identifier(identifier)

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        """A block whose failure must not end the others.

        On PostgreSQL a failed statement aborts the whole transaction, so the block runs in a
        SAVEPOINT that is rolled back on error (the snapshot survives); SQLite needs nothing.
        """
        if self.dialect == "postgresql":
            with self.connection.begin_nested():
                yield
        else:
            yield

    @functools.cached_property
    def inspector(self) -> Inspector:
        return inspect(self.connection)

    def tables(self) -> list[str]:
        return sorted(self.inspector.get_table_names())

    def columns(self) -> dict[str, list[dict[str, Any]]]:
        """Per table: name, type, nullable, default, primary_key (position in the key, 0 if not)."""
        keys = {table: pk["constrained_columns"] for (_, table), pk in self.inspector.get_multi_pk_constraint().items()}
        found = {}
        for (_, table), cols in self.inspector.get_multi_columns().items():
            key = keys.get(table, [])
            found[table] = [
                {
                    "name": c["name"],
                    "type": self._type_name(c["type"]),
                    "nullable": c["nullable"],
                    "default": c.get("default"),
                    "primary_key": key.index(c["name"]) + 1 if c["name"] in key else 0,
                }
                for c in cols
            ]
        return found

    def _type_name(self, type_: Any) -> str:
        try:
            return str(type_.compile(dialect=self.connection.dialect))
        except CompileError:  # a type SQLAlchemy reflects but cannot render
            return repr(type_)

    def foreign_keys(self) -> list[ForeignKey]:
        """Every foreign key; one that names no parent columns refers to the parent's primary key."""
        found = self.inspector.get_multi_foreign_keys()
        own = {None, self.inspector.default_schema_name}
        return [
            ForeignKey(
                table,
                tuple(fk["constrained_columns"]),
                fk["referred_table"],
                tuple(fk["referred_columns"]),
                fk.get("name") or "",
                None if fk.get("referred_schema") in own else fk["referred_schema"],
            )
            for (_, table), keys in sorted(found.items(), key=lambda item: item[0][1])
            for fk in sorted(keys, key=lambda k: (k.get("name") or "", k["constrained_columns"]))
        ]

    def invalid_indexes(self) -> list[str] | None:
        """PostgreSQL: indexes the planner ignores (a failed CREATE INDEX CONCURRENTLY); None on SQLite."""
        if self.dialect != "postgresql":
            return None
        return sorted(
            f"{index['name']} ({table})"
            for (_, table), indexes in self.inspector.get_multi_indexes().items()
            for index in indexes
            if index.get("dialect_options", {}).get("postgresql_invalid")
        )

    def unvalidated_foreign_keys(self) -> list[str] | None:
        """PostgreSQL: foreign keys added NOT VALID and never validated; None on SQLite.

        SQLAlchemy does not reflect `convalidated`, so this one reads the catalog.
        """
        if self.dialect != "postgresql":
            return None
        return [
            f"{name} ({table})"
            for table, name in self.rows(
                "SELECT cl.relname, c.conname FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid "
                "WHERE c.contype = 'f' AND NOT c.convalidated AND cl.relnamespace = current_schema()::regnamespace "
                "ORDER BY cl.relname, c.conname"
            )
        ]

    def create_statements(self) -> dict[str, str]:
        """SQLite keeps each table's CREATE statement; PostgreSQL does not (empty dict)."""
        if self.dialect != "sqlite":
            return {}
        return dict(self.rows("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))


def first_line(exc: BaseException) -> str:
    """The driver's own message for a failed statement (without SQLAlchemy's [SQL: ...] block)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


@contextlib.contextmanager
def open_store(uri: str) -> Iterator[StoreReader]:
    """Open the store read-only and check that it is an MLflow store; UserError otherwise."""
    try:
        url = make_url(uri)
    except ArgumentError:
        raise UserError(
            f"{mask_uri(uri)!r} is not a database URI (expected sqlite:////abs/file.db or postgresql+psycopg2://...)"
        ) from None
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise UnsupportedStore(
            f"{mask_uri(uri)}: unsupported backend {backend!r}; inspect reads SQLite and PostgreSQL stores"
        )
    with contextlib.ExitStack() as stack:  # closes the connection, then disposes of its engine
        reader = _open_sqlite(stack, uri, url.database) if backend == "sqlite" else _open_postgres(stack, url)
        _check_is_mlflow_store(reader)
        yield reader


def _open_sqlite(stack: contextlib.ExitStack, uri: str, database: str | None) -> StoreReader:
    if not database or database == ":memory:":
        raise UnsupportedStore(f"{mask_uri(uri)!r} names no database file; give sqlite:////absolute/path/mlflow.db")
    path = Path(database).expanduser().resolve()
    if not path.is_file():
        raise UserError(
            f"no SQLite store at {path}: the file does not exist (start the server once, or fix --uri / sqlite.path)"
        )
    immutable = _unopened_wal(path)
    engine = stack.enter_context(
        engine_for("sqlite://", creator=lambda: connect_sqlite_readonly(path, immutable=immutable))
    )
    try:
        connection = stack.enter_context(engine.connect())
        connection.execute(text("SELECT count(*) FROM sqlite_master")).scalar()  # opening reads nothing
    except DBAPIError as exc:
        raise UserError(f"{path}: {first_line(exc)} (not an SQLite database, or a damaged one)") from None
    return StoreReader(connection, f"sqlite:///{path}", str(path), sqlite_path=path)


def _unopened_wal(path: Path) -> bool:
    """A WAL-mode file that no process has open: we read it immutable=1, not just mode=ro.

    A mode=ro reader of a WAL-mode file creates the -wal and -shm files and leaves them
    behind; when they are absent nobody has the file open (the last connection removes
    them), so we read it as immutable and create nothing.
    """
    side_files = [Path(f"{path}-wal"), Path(f"{path}-shm")]
    return sqlite_journal_mode(path) == "wal" and not any(f.exists() for f in side_files)


def _open_postgres(stack: contextlib.ExitStack, url: URL) -> StoreReader:
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    query = {k: v for k, v in url.query.items() if isinstance(v, str)}
    args = {
        "connect_timeout": int(query.get("connect_timeout", 10)),
        "application_name": APPLICATION_NAME,
        "options": " ".join(filter(None, [query.get("options"), PG_LIMITS])),  # keep a search_path the URI sets
    }
    engine = stack.enter_context(engine_for(url.set(drivername="postgresql+psycopg2"), connect_args=args))
    try:
        connection = stack.enter_context(engine.connect())
    except DBAPIError as exc:
        raise UserError(_connect_problem(exc, where, url)) from None
    stack.callback(_rollback_quietly, connection)  # before the close: nothing to keep, the transaction only read
    # One consistent snapshot for every section; psycopg2 opens the transaction READ ONLY.
    connection = connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    connection.begin()
    return StoreReader(
        connection, mask_uri(url.render_as_string(hide_password=False)), f"PostgreSQL {where}/{url.database or ''}"
    )


def _rollback_quietly(connection: Connection) -> None:
    with contextlib.suppress(Exception):
        connection.rollback()


def _connect_problem(exc: DBAPIError, where: str, url: URL) -> str:
    """explain_error's phrase plus what to do about it."""
    cause = exc.orig if isinstance(exc.orig, Exception) else str(exc)
    reason = explain_error(cause, where, (url.password,) if url.password else ())
    if reason.startswith(("nothing answers", "no answer")):
        return f"cannot reach PostgreSQL ({reason}); start it with `inv db.start` or fix --uri"
    if "password authentication failed" in reason or "no password supplied" in reason:
        return f"PostgreSQL at {where} refused the password for user {url.username!r} ({reason}); check postgres.password / --uri"
    if "does not exist" in reason and "database" in reason:
        return f"PostgreSQL at {where} has no database {url.database!r}; check postgres.database / --uri"
    return f"cannot connect to PostgreSQL at {where}: {reason}; check --uri"


def _check_is_mlflow_store(reader: StoreReader) -> None:
    tables = set(reader.tables())
    if not tables:
        raise UserError(
            f"{reader.shown_uri} is an empty database (no tables); start an MLflow server on it once to create the schema"
        )
    missing = [t for t in MLFLOW_CORE_TABLES if t not in tables]
    if missing:
        raise UserError(f"{reader.shown_uri} is not an MLflow store: no {', '.join(missing)} table(s)")


def file_size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None
