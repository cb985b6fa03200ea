"""The database helpers: the read-only SQLite opener, SQLite connections, engines, the libpq DSN builder."""

from __future__ import annotations

import shlex
import sqlite3
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from invoke import MockContext, Result
from psycopg2.extensions import parse_dsn

from tasks import db as db_tasks
from tasks.libs.core.databases import (
    connect_sqlite_readonly,
    engine_for,
    sqlite_connection,
    sqlite_journal_mode,
    sqlite_readonly,
)
from tasks.libs.core.errors import ConfigError
from tasks.libs.core.processes import free_port
from tasks.libs.postgres.connection import ConnectError, libpq_dsn, libpq_params, libpq_url, pg_connection
from tests.support.settings import PG_PASSWORD, make_settings

# URI syntax in a folder and a file name: an unquoted file: URI cuts the path at `?` or `#`,
# and opens (creating it, read-write) another file.
URI_CHARACTERS = "a?b#c%41 d"


def _store(path) -> None:
    with sqlite_connection(path) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_sqlite_readonly_opens_a_path_with_uri_characters_and_refuses_writes(tmp_path, monkeypatch):
    folder = tmp_path / URI_CHARACTERS
    folder.mkdir()
    path = folder / f"{URI_CHARACTERS}.db"
    _store(path)
    before = _files(tmp_path)
    with sqlite_readonly(path) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("INSERT INTO t VALUES (2)")
    monkeypatch.chdir(folder)  # a relative path is made absolute first
    with sqlite_readonly(f"{URI_CHARACTERS}.db") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert _files(tmp_path) == before  # no other file was opened (or made) by a misread URI
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")


def test_immutable_reader_of_an_unopened_wal_file_leaves_no_side_files(tmp_path):
    path = tmp_path / f"{URI_CHARACTERS}.db"
    _store(path)
    with sqlite_connection(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    assert sqlite_journal_mode(path) == "wal"
    before = _files(tmp_path)
    assert before == [path.name]  # the last connection removed -wal and -shm
    with sqlite_readonly(path, immutable=True) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert _files(tmp_path) == before
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM t")
    assert _files(tmp_path) == before


def test_sqlite_connection_commits_rolls_back_and_always_closes(tmp_path):
    path = tmp_path / "rw.db"
    _store(path)
    with pytest.raises(RuntimeError), sqlite_connection(path) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("the block failed")
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
    with sqlite_connection(path) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]  # the failed block's row is gone
        conn.execute("INSERT INTO t VALUES (3)")
    with sqlite_connection(path, autocommit=True) as conn:
        conn.execute("VACUUM")  # refused inside a transaction
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (3,)]


def test_engine_for_takes_a_creator_and_reads_through_it(tmp_path):
    path = tmp_path / f"{URI_CHARACTERS}.db"
    _store(path)
    with engine_for("sqlite://", creator=lambda: connect_sqlite_readonly(path)) as engine:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM t")).scalar() == 1
        with pytest.raises(sa.exc.OperationalError, match="readonly"), engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (2)"))
    assert _files(tmp_path) == [path.name]


# --- the libpq DSN -----------------------------------------------------------------------------


def test_libpq_params_keep_a_password_full_of_uri_characters(tmp_path):
    settings = make_settings(tmp_path, backend="postgres", **{"postgres.password": PG_PASSWORD})
    pg = settings.postgres
    params = libpq_params(settings)
    assert params == {
        "host": pg.host,
        "port": str(pg.port),
        "user": pg.user,
        "password": PG_PASSWORD,
        "dbname": pg.database,
    }
    assert parse_dsn(libpq_dsn(params)) == params  # libpq reads back what we wrote, both forms
    assert parse_dsn(libpq_url(params)) == params
    moved = libpq_params(settings, dbname="postgres", host="::1", port=6432)
    assert moved == {**params, "dbname": "postgres", "host": "::1", "port": "6432"}
    assert parse_dsn(libpq_url(moved)) == moved


def test_libpq_params_of_an_external_uri_keep_its_query_and_decode_every_part(tmp_path):
    uri = (
        f"postgresql://{quote('us@r', safe='')}:{quote(PG_PASSWORD, safe='')}@db.example:5433/my%20db"
        "?sslmode=require&application_name=ops"
    )
    settings = make_settings(tmp_path, backend="postgres", **{"postgres.provider": "external", "postgres.uri": uri})
    params = libpq_params(settings)
    assert params == {
        "host": "db.example",
        "port": "5433",
        "user": "us@r",
        "password": PG_PASSWORD,
        "dbname": "my db",
        "sslmode": "require",
        "application_name": "ops",
    }
    assert parse_dsn(libpq_dsn(params)) == params
    assert parse_dsn(libpq_url(params)) == params
    shown = libpq_dsn(libpq_params(settings, password=False))
    assert PG_PASSWORD not in shown and quote(PG_PASSWORD, safe="") not in shown and "***" not in shown


def test_libpq_params_without_the_password_need_none(tmp_path):
    settings = make_settings(tmp_path, backend="postgres")  # none configured, none generated yet
    with pytest.raises(ConfigError, match="no PostgreSQL password"):
        libpq_params(settings)
    assert "password" not in libpq_params(settings, password=False)


def test_db_psql_passes_the_password_by_environment_only(tmp_path, monkeypatch):
    settings = make_settings(tmp_path, backend="postgres", **{"postgres.password": PG_PASSWORD})
    monkeypatch.setattr(db_tasks, "_settings", lambda *args: settings)
    c = MockContext(run=Result())
    db_tasks.psql(c)
    (command,), kwargs = c.run.call_args  # type: ignore[attr-defined]  # MockContext wraps run in a Mock
    assert kwargs["env"] == {"PGPASSWORD": PG_PASSWORD}
    assert PG_PASSWORD not in command and quote(PG_PASSWORD, safe="") not in command
    program, dbname = shlex.split(command)
    assert program == "psql"
    assert parse_dsn(dbname.removeprefix("--dbname=")) == {
        k: v for k, v in libpq_params(settings).items() if k != "password"
    }


def test_pg_connection_that_cannot_connect_says_why_without_the_password(tmp_path):
    settings = make_settings(tmp_path, backend="postgres", **{"postgres.password": PG_PASSWORD})
    port = free_port()
    with pytest.raises(ConnectError) as failed, pg_connection(settings, port=port, timeout=2):
        pass
    assert failed.value.reason == f"nothing answers at {settings.postgres.host}:{port}"
    assert PG_PASSWORD not in str(failed.value)
