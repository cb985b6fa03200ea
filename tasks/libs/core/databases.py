"""Database handles that know no dialect: SQLAlchemy engines, SQLite connections, the SQLite header.

One place makes each kind of handle, and each is a context manager that closes what it opened:

- `engine_for`: an engine without a pool, disposed at the end of the block (every engine we
  make; `creator` / `connect_args` for the read-only ones store.reader opens);
- `sqlite_connection`: a read-write sqlite3 connection; `sqlite_readonly`: a read-only one
  (`connect_sqlite_readonly` is the bare opener, for an engine's `creator`).

sqlite3's own `with conn:` (like psycopg2's) only ends a transaction; it never closes the
connection, so a `with sqlite3.connect(...)` leaks the handle until garbage collection.
PostgreSQL's connections and DSNs live in postgres.connection.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

# MLflow's own busy_timeout: a live server may hold a write lock for a moment.
SQLITE_TIMEOUT = 20.0


@contextlib.contextmanager
def engine_for(
    uri: str | sa.URL,
    *,
    creator: Callable[[], Any] | None = None,
    connect_args: Mapping[str, Any] | None = None,
) -> Iterator[sa.Engine]:
    """An engine without a pool (no connection outlives its use), disposed at the end of the block.

    creator: a function that returns a DBAPI connection (the URI then names only the dialect,
    e.g. "sqlite://"); connect_args: extra keyword arguments for the driver's connect().
    """
    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if creator is not None:
        kwargs["creator"] = creator
    if connect_args:
        kwargs["connect_args"] = dict(connect_args)
    engine = sa.create_engine(uri, **kwargs)
    try:
        yield engine
    finally:
        engine.dispose()


def sqlite_readonly_uri(path: str | os.PathLike[str], *, immutable: bool = False) -> str:
    """The `file:` URI that opens path read-only; immutable=True also tells SQLite nothing changes it.

    The path is made absolute and percent-quoted: `?`, `#`, `%` and spaces in a file name are
    URI syntax, and an unquoted one opens (and creates) another file, read-write.
    """
    absolute = os.path.abspath(os.fspath(path))
    return f"file://{quote(absolute)}?mode=ro" + ("&immutable=1" if immutable else "")


def connect_sqlite_readonly(
    path: str | os.PathLike[str], *, immutable: bool = False, timeout: float = SQLITE_TIMEOUT
) -> sqlite3.Connection:
    """A read-only sqlite3 connection (the caller closes it; `sqlite_readonly` does that for a block).

    immutable=True: for a WAL-mode file that no process has open. A plain mode=ro reader of
    such a file creates its -wal and -shm files and leaves them behind; an immutable one
    creates nothing (and sees no later writes: only for a file nobody writes).
    """
    return sqlite3.connect(sqlite_readonly_uri(path, immutable=immutable), uri=True, timeout=timeout)


@contextlib.contextmanager
def sqlite_readonly(
    path: str | os.PathLike[str], *, immutable: bool = False, timeout: float = SQLITE_TIMEOUT
) -> Iterator[sqlite3.Connection]:
    """A read-only sqlite3 connection for the block, closed at its end; writes raise OperationalError."""
    with contextlib.closing(connect_sqlite_readonly(path, immutable=immutable, timeout=timeout)) as conn:
        yield conn


@contextlib.contextmanager
def sqlite_connection(
    path: str | os.PathLike[str], *, autocommit: bool = False, timeout: float = SQLITE_TIMEOUT
) -> Iterator[sqlite3.Connection]:
    """A read-write sqlite3 connection for the block, closed at its end.

    autocommit=False: what the block left open is committed when it ends normally and rolled
    back when it raises. autocommit=True: no implicit transaction at all (VACUUM, PRAGMAs that
    must run outside one).
    """
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None if autocommit else "DEFERRED")
    try:
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
        raise
    finally:
        conn.close()


def sqlite_journal_mode(path: str | os.PathLike[str]) -> str:
    """'wal' or 'rollback', from the file header; 'no file' if it is missing.

    Read from the header, not with PRAGMA journal_mode: that would say 'delete' on an immutable
    connection, and a mode=ro connection to a WAL file leaves -wal and -shm files behind.
    """
    try:
        with Path(path).open("rb") as fh:
            header = fh.read(20)
    except FileNotFoundError:
        return "no file"
    return "wal" if len(header) == 20 and header[:16] == b"SQLite format 3\x00" and header[18] == 2 else "rollback"
