"""The local PostgreSQL provider with real server binaries."""

import os
import subprocess

import psutil
import pytest
from pydantic import SecretStr

from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import port_is_free
from tasks.libs.core.waits import wait_until
from tasks.libs.postgres import os_user
from tasks.libs.postgres.connection import (
    check_reachable,
    create_database,
    database_exists,
    drop_database,
    pg_connection,
)
from tasks.libs.postgres.local import LocalPostgres
from tasks.libs.postgres.providers import provider_for
from tests.support.settings import PG_PASSWORD, make_settings

pytestmark = pytest.mark.integration


def test_start_from_nothing_then_reuse_then_restart_keeps_data(state_dir):
    settings = make_settings(state_dir, backend="postgres")
    db = provider_for(settings)
    try:
        assert "initialised and started" in db.start()
        assert "already running (reused)" in db.start()
        with pg_connection(settings) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        assert db.stop() == "PostgreSQL stopped"
        assert check_reachable(settings) is not None
        assert "PostgreSQL started" in db.start()
        with pg_connection(settings) as conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchone() == (42,)
    finally:
        db.stop()


def test_generated_password_is_private_and_never_in_argv(state_dir):
    settings = make_settings(state_dir, backend="postgres")
    db = LocalPostgres(settings)
    try:
        db.start()
        secret_file = state_dir / "secrets" / "postgres_password"
        assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
        assert oct((state_dir / "postgres" / "data").stat().st_mode & 0o777) == "0o700"
        password = secret_file.read_text().strip()
        postmaster = psutil.Process(db.postmaster_pid())
        for proc in [postmaster, *postmaster.children()]:
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.NoSuchProcess:  # a short-lived backend ended while we looked
                continue
            assert password not in cmdline
        assert password not in (state_dir / "postgres" / "postgres.log").read_text()
    finally:
        db.stop()


def test_listens_on_loopback_only(pg_settings):
    with pg_connection(pg_settings) as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)


def test_password_with_uri_characters_connects(pg_settings):
    assert pg_settings.postgres.password.get_secret_value() == PG_PASSWORD
    assert check_reachable(pg_settings) is None


def test_pg_connection_commits_a_finished_block_rolls_back_a_failed_one_and_always_closes(pg_settings):
    with pg_connection(pg_settings) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS cm_probe; CREATE TABLE cm_probe (x int); INSERT INTO cm_probe VALUES (1)")
    assert conn.closed
    with pytest.raises(RuntimeError), pg_connection(pg_settings) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO cm_probe VALUES (2)")
        raise RuntimeError("the block failed")
    assert conn.closed
    with pg_connection(pg_settings, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT x FROM cm_probe")
        assert cur.fetchall() == [(1,)]
        cur.execute("DROP TABLE cm_probe")


def test_create_and_drop_database_quote_the_name_and_force_out_its_sessions(pg_settings):
    name = 'cm "odd" Name-1'
    drop_database(pg_settings, name)
    assert create_database(pg_settings, name) is True
    assert create_database(pg_settings, name, if_missing=True) is False
    with pytest.raises(UserError, match="cannot create database"):
        create_database(pg_settings, name)
    with pg_connection(pg_settings, dbname=name, autocommit=True):  # a session DROP ... WITH (FORCE) ends
        assert database_exists(pg_settings, name)
        drop_database(pg_settings, name)
    assert not database_exists(pg_settings, name)


def test_wrong_password_is_refused_with_a_clear_reason(pg_settings):
    wrong = pg_settings.model_copy(deep=True)
    wrong.postgres.password = SecretStr("wrong")
    problem = str(check_reachable(wrong))
    assert "password authentication failed" in problem


def test_stale_postmaster_pid_is_recovered_without_losing_data(state_dir):
    settings = make_settings(state_dir, backend="postgres")
    db = LocalPostgres(settings)
    try:
        db.start()
        with pg_connection(settings) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        pid = db.postmaster_pid()
        assert pid is not None
        os.kill(pid, 9)  # a crash: postmaster.pid stays behind
        pid_file = state_dir / "postgres" / "data" / "postmaster.pid"
        assert pid_file.exists()
        _wait_gone(pid)
        assert "PostgreSQL started" in db.start()
        with pg_connection(settings) as conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchone() == (7,)
    finally:
        db.stop()


def test_busy_port_is_reported_and_nothing_started(state_dir):
    settings = make_settings(state_dir, backend="postgres")
    holder = subprocess.Popen(
        ["python3", "-m", "http.server", str(settings.postgres.port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: not port_is_free("127.0.0.1", settings.postgres.port), timeout=10)
        with pytest.raises(UserError, match=rf"port {settings.postgres.port} .* in use by pid {holder.pid}"):
            provider_for(settings).start()
        assert holder.poll() is None
    finally:
        holder.terminate()
        holder.wait()


def test_missing_binaries_is_one_clear_error(state_dir, monkeypatch):
    settings = make_settings(state_dir, backend="postgres")
    monkeypatch.setattr(os_user, "find_binaries", lambda bin_dir, tools: None)
    with pytest.raises(UserError, match="apt-get install postgresql"):
        provider_for(settings).start()


def _wait_gone(pid):
    assert wait_until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=10
    )


def test_postmaster_pid_naming_a_live_foreign_process_is_cleared_and_that_process_spared(state_dir):
    settings = make_settings(state_dir, backend="postgres")
    db = provider_for(settings)
    foreign = subprocess.Popen(["sleep", "300"])
    try:
        db.start()
        with pg_connection(settings) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (9)")
        db.stop()
        pid_file = state_dir / "postgres" / "data" / "postmaster.pid"
        pid_file.write_text(f"{foreign.pid}\n{state_dir / 'postgres' / 'data'}\n")  # a reused pid
        assert "PostgreSQL started" in db.start()
        assert foreign.poll() is None
        with pg_connection(settings) as conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchone() == (9,)
    finally:
        db.stop()
        foreign.terminate()
        foreign.wait()
