"""Read-only connections to an MLflow store (SQLite file or PostgreSQL) behind one small API.

Nothing here writes: SQLite is opened with mode=ro (or immutable=1, see _sqlite_open_uri) and
PostgreSQL runs every query in one READ ONLY, REPEATABLE READ transaction that is rolled back.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tasks.libs.core.errors import UserError
from tasks.libs.core.redact import mask_uri

# Tables every MLflow tracking store has; missing ones mean "not an MLflow store".
MLFLOW_CORE_TABLES = ("alembic_version", "experiments", "runs")


@dataclass(frozen=True)
class ForeignKey:
    table: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    name: str = ""


class StoreReader:
    """Queries with '?' placeholders against either dialect; rows come back as tuples."""

    def __init__(self, conn: Any, dialect: str, shown_uri: str, sqlite_path: Path | None = None):
        self.conn = conn
        self.dialect = dialect  # "sqlite" | "postgresql"
        self.shown_uri = shown_uri  # masked, safe to print
        self.sqlite_path = sqlite_path
        if dialect == "sqlite":
            self.errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        else:
            import psycopg2

            self.errors = (psycopg2.Error,)

    def recover(self) -> None:
        """After a failed query: PostgreSQL needs the aborted transaction rolled back."""
        if self.dialect == "postgresql":
            self.conn.rollback()

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql if self.dialect == "sqlite" else sql.replace("?", "%s"), params)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()

    def dicts(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql if self.dialect == "sqlite" else sql.replace("?", "%s"), params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            cur.close()

    def scalar(self, sql: str, params: tuple = ()) -> Any:
        found = self.rows(sql, params)
        return found[0][0] if found else None

    def quote(self, identifier: str) -> str:
        return '"' + identifier.replace('"', '""') + '"'

    def tables(self) -> list[str]:
        if self.dialect == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        else:
            sql = (
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
        return [r[0] for r in self.rows(sql)]

    def columns(self, table: str) -> list[dict[str, Any]]:
        """name, type, nullable, default, primary_key (position in the key, 0 if not)."""
        if self.dialect == "sqlite":
            return [
                {"name": name, "type": type_, "nullable": not notnull, "default": default, "primary_key": pk}
                for _, name, type_, notnull, default, pk in self.rows(f"PRAGMA table_info({self.quote(table)})")
            ]
        pk = {
            name: pos
            for name, pos in self.rows(
                "SELECT a.attname, array_position(c.conkey, a.attnum) FROM pg_constraint c "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
                "WHERE c.contype = 'p' AND c.conrelid = to_regclass(?)",
                (self.quote(table),),
            )
        }
        return [
            {"name": name, "type": type_, "nullable": nullable, "default": default, "primary_key": pk.get(name, 0)}
            for name, type_, nullable, default in self.rows(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid) "
                "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (self.quote(table),),
            )
        ]

    def foreign_keys(self) -> list[ForeignKey]:
        if self.dialect == "sqlite":
            keys = []
            for table in self.tables():
                grouped: dict[int, list[tuple]] = {}
                for fk_id, seq, parent, col, parent_col, *_ in self.rows(f"PRAGMA foreign_key_list({self.quote(table)})"):
                    grouped.setdefault(fk_id, []).append((seq, parent, col, parent_col))
                for fk_id, parts in sorted(grouped.items()):
                    parts.sort()
                    parent = parts[0][1]
                    # A key that names no parent columns refers to the parent's primary key.
                    parent_cols = tuple(p[3] for p in parts) if all(p[3] for p in parts) else tuple(
                        c["name"] for c in sorted(self.columns(parent), key=lambda c: c["primary_key"]) if c["primary_key"]
                    )
                    keys.append(ForeignKey(table, tuple(p[2] for p in parts), parent, parent_cols, str(fk_id)))
            return keys
        found = self.rows(
            "SELECT c.conname, cl.relname, pl.relname, "
            "  ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i) "
            "        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i), "
            "  ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i) "
            "        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i) "
            "FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_class pl ON pl.oid = c.confrelid "
            "WHERE c.contype = 'f' AND cl.relnamespace = current_schema()::regnamespace ORDER BY cl.relname, c.conname"
        )
        return [ForeignKey(table, tuple(cols), parent, tuple(pcols), name) for name, table, parent, cols, pcols in found]

    def create_statements(self) -> dict[str, str]:
        """SQLite keeps each table's CREATE statement; PostgreSQL does not (empty dict)."""
        if self.dialect != "sqlite":
            return {}
        return dict(self.rows("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))


@contextlib.contextmanager
def open_store(uri: str) -> Iterator[StoreReader]:
    """Open the store read-only and check that it is an MLflow store; UserError otherwise."""
    try:
        url = make_url(uri)
    except ArgumentError:
        raise UserError(f"{mask_uri(uri)!r} is not a database URI (expected sqlite:////abs/file.db or postgresql+psycopg2://...)") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        reader = _open_sqlite(uri, url.database)
    elif backend in ("postgresql", "postgres"):
        reader = _open_postgres(url)
    else:
        raise UserError(f"{mask_uri(uri)}: unsupported backend {backend!r}; inspect reads SQLite and PostgreSQL stores")
    try:
        _check_is_mlflow_store(reader)
        yield reader
    finally:
        if reader.dialect == "postgresql":
            with contextlib.suppress(Exception):
                reader.conn.rollback()
        reader.conn.close()


def _open_sqlite(uri: str, database: str | None) -> StoreReader:
    if not database or database == ":memory:":
        raise UserError(f"{uri!r} names no database file; give sqlite:////absolute/path/mlflow.db")
    path = Path(database).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"no SQLite store at {path}: the file does not exist (start the server once, or fix --uri / sqlite.path)")
    try:
        conn = sqlite3.connect(_sqlite_open_uri(path), uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path} is not an SQLite database ({exc})") from None
    return StoreReader(conn, "sqlite", f"sqlite:///{path}", sqlite_path=path)


def _sqlite_open_uri(path: Path) -> str:
    """mode=ro, or immutable=1 for a WAL-mode file that no process has open.

    A mode=ro reader of a WAL-mode file creates the -wal and -shm files and leaves them
    behind; when they are absent nobody has the file open (the last connection removes
    them), so we read it as immutable and create nothing.
    """
    base = "file:" + quote(str(path))
    side_files = [Path(f"{path}-wal"), Path(f"{path}-shm")]
    if sqlite_journal_mode(path) == "wal" and not any(f.exists() for f in side_files):
        return base + "?mode=ro&immutable=1"
    return base + "?mode=ro"


def sqlite_journal_mode(path: Path) -> str:
    """'wal' or 'rollback', from the file header (PRAGMA journal_mode would say 'delete' when immutable)."""
    with path.open("rb") as fh:
        header = fh.read(20)
    return "wal" if len(header) == 20 and header[:16] == b"SQLite format 3\x00" and header[18] == 2 else "rollback"


def _open_postgres(url) -> StoreReader:
    import psycopg2

    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    shown = mask_uri(url.render_as_string(hide_password=False))
    try:
        conn = psycopg2.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            connect_timeout=10,
            application_name="mlflow-ops inspect",
            options="-c lock_timeout=10s -c statement_timeout=300s",
            **{k: v for k, v in url.query.items() if isinstance(v, str)},
        )
    except psycopg2.OperationalError as exc:
        raise UserError(_explain_pg_error(str(exc), where, url)) from None
    conn.set_session(readonly=True, isolation_level="REPEATABLE READ")  # one consistent snapshot
    return StoreReader(conn, "postgresql", shown)


def _explain_pg_error(message: str, where: str, url) -> str:
    text = " ".join(message.split())
    if "password authentication failed" in text or "no password supplied" in text:
        return f"PostgreSQL at {where} refused the password for user {url.username!r}; check postgres.password / --uri"
    if "does not exist" in text and "database" in text:
        return f"PostgreSQL at {where} has no database {url.database!r}; check postgres.database / --uri"
    if "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        return f"cannot reach PostgreSQL at {where} (nothing answers there); start it with `inv db.start` or fix --uri"
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if url.password:
        first = first.replace(url.password, "***")
    return f"cannot connect to PostgreSQL at {where}: {first}"


def _check_is_mlflow_store(reader: StoreReader) -> None:
    tables = set(reader.tables())
    if not tables:
        raise UserError(f"{reader.shown_uri} is an empty database (no tables); start an MLflow server on it once to create the schema")
    missing = [t for t in MLFLOW_CORE_TABLES if t not in tables]
    if missing:
        raise UserError(f"{reader.shown_uri} is not an MLflow store: no {', '.join(missing)} table(s)")


def file_size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None
