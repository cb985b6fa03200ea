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
from tasks.libs.postgres.connection import check_reachable, connect
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
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        assert db.stop() == "PostgreSQL stopped"
        assert check_reachable(settings) is not None
        assert "PostgreSQL started" in db.start()
        with connect(settings) as conn, conn.cursor() as cur:
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
    with connect(pg_settings) as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)


def test_password_with_uri_characters_connects(pg_settings):
    assert pg_settings.postgres.password.get_secret_value() == PG_PASSWORD
    assert check_reachable(pg_settings) is None


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
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        pid = db.postmaster_pid()
        assert pid is not None
        os.kill(pid, 9)  # a crash: postmaster.pid stays behind
        pid_file = state_dir / "postgres" / "data" / "postmaster.pid"
        assert pid_file.exists()
        _wait_gone(pid)
        assert "PostgreSQL started" in db.start()
        with connect(settings) as conn, conn.cursor() as cur:
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
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (9)")
        db.stop()
        pid_file = state_dir / "postgres" / "data" / "postmaster.pid"
        pid_file.write_text(f"{foreign.pid}\n{state_dir / 'postgres' / 'data'}\n")  # a reused pid
        assert "PostgreSQL started" in db.start()
        assert foreign.poll() is None
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchone() == (9,)
    finally:
        db.stop()
        foreign.terminate()
        foreign.wait()
