"""PostgreSQL backend: provider choice, connections, readiness and the database itself."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Protocol

import psycopg2
from psycopg2 import sql

from tasks.cli import UserError
from tasks.credentials import known_secrets, postgres_password, postgres_uri
from tasks.settings import ConfigError, Settings


class Provider(Protocol):
    name: str

    def start(self) -> str: ...
    def stop(self) -> str: ...
    def status(self) -> dict: ...
    def logs(self, lines: int) -> str: ...


def provider_for(settings: Settings, *, docker_client_factory=None) -> Provider:
    """The provider config names; `auto` reuses the last one started, else docker, else local."""
    from tasks import pg_docker, pg_local  # here, so that `import docker` costs only who needs it

    choice = settings.postgres.provider
    if choice == "auto":
        choice = remembered_provider(settings) or _detect(settings, docker_client_factory)
    if choice == "external":
        return ExternalPostgres(settings)
    password = postgres_password(settings, generate=True)
    if choice == "docker":
        return pg_docker.DockerPostgres(settings, password, client_factory=docker_client_factory)
    return pg_local.LocalPostgres(settings, password)


def remember_provider(settings: Settings, name: str) -> None:
    path = _choice_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n")


def remembered_provider(settings: Settings) -> str | None:
    path = _choice_file(settings)
    return path.read_text().strip() if path.is_file() else None


def connect(settings: Settings, *, dbname: str | None = None, password: str | None = None,
            timeout: int = 3):
    """A psycopg2 connection to the configured database (or dbname on the same server)."""
    pg = settings.postgres
    if pg.provider == "external":
        dsn = postgres_uri(settings, reveal=True).replace("postgresql+psycopg2://", "postgresql://", 1)
        return psycopg2.connect(dsn, connect_timeout=timeout)
    return psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, dbname=dbname or pg.database,
                            password=password if password is not None else postgres_password(settings),
                            connect_timeout=timeout)


def check_reachable(settings: Settings, *, password: str | None = None, dbname: str | None = None) -> str | None:
    """None when `SELECT 1` works as the configured user on the database, else why not."""
    try:
        conn = connect(settings, password=password, dbname=dbname)
    except psycopg2.Error as exc:
        return describe_error(exc, settings)
    except ConfigError as exc:  # no password yet
        return str(exc)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return None
    finally:
        conn.close()


def wait_ready(settings: Settings, *, password: str, timeout: float) -> None:
    """Wait for the server to take logins, create our database if missing, then `SELECT 1` in it."""
    deadline = time.monotonic() + timeout
    problem = "not tried"
    while time.monotonic() < deadline:
        problem = check_reachable(settings, password=password, dbname="postgres")
        if problem is None:
            break
        if "authentication failed" in problem:
            raise UserError(f"PostgreSQL refused the login ({problem}); the data directory was made "
                            "with another password: set it, or `inv db.reset --yes`")
        time.sleep(0.2)
    else:
        raise UserError(f"PostgreSQL did not become ready within {timeout:.0f} s ({problem})")
    ensure_database(settings, password=password)
    problem = check_reachable(settings, password=password)
    if problem:
        raise UserError(f"PostgreSQL is up but the database is not usable ({problem})")


def ensure_database(settings: Settings, *, password: str) -> bool:
    """Create the configured database if it is missing; True if it was created."""
    conn = connect(settings, dbname="postgres", password=password)
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


def recreate_database(settings: Settings, *, password: str) -> None:
    """Drop the configured database (ending its sessions) and create it empty."""
    conn = connect(settings, dbname="postgres", password=password)
    conn.autocommit = True
    name = sql.Identifier(settings.postgres.database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(name))
    finally:
        conn.close()


def describe_error(exc: Exception, settings: Settings) -> str:
    """psycopg2's multi-line message cut to the line that says what went wrong."""
    pg = settings.postgres
    text = str(exc).strip()
    where = "the external server" if pg.provider == "external" else f"{pg.host}:{pg.port}"
    if "Connection refused" in text or ("could not connect" in text and "timeout" not in text):
        return f"nothing answers at {where}"
    if "timeout expired" in text:
        return f"no answer from {where} (timeout)"
    lines = [line for line in text.splitlines() if line.strip()]
    reason = lines[-1].removeprefix("FATAL:").strip() if lines else type(exc).__name__
    for secret in known_secrets(settings):  # libpq repeats a malformed DSN, password and all
        reason = reason.replace(secret, "***")
    return reason


class ExternalPostgres:
    """A server someone else runs: we only connect to it."""

    name = "external"

    def __init__(self, settings: Settings):
        self.settings = settings

    def start(self) -> str:
        problem = check_reachable(self.settings)
        if problem:
            raise UserError(f"the external PostgreSQL is not usable ({problem}); check postgres.uri")
        return "external PostgreSQL answers; nothing to start"

    def stop(self) -> str:
        return "external PostgreSQL is not ours to stop; left running"

    def status(self) -> dict:
        problem = check_reachable(self.settings)
        return {"provider": self.name, "running": problem is None, "problem": problem,
                "url": postgres_uri(self.settings)}

    def logs(self, lines: int) -> str:
        raise UserError("the external PostgreSQL's logs are on its own host")


def find_binaries(bin_dir: str | None) -> Path | None:
    """The folder holding initdb/pg_ctl/postgres: config, then PATH, then the usual places."""
    candidates: list[Path] = []
    if bin_dir:
        candidates.append(Path(bin_dir))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin",
                    "/usr/local/opt/postgresql@*/bin", "/usr/local/pgsql/bin"):
        candidates += sorted(Path("/").glob(pattern.lstrip("/")), key=_version_key, reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _version_key(path: Path) -> int:
    digits = "".join(ch for ch in path.parent.name if ch.isdigit())
    return int(digits) if digits else 0


def _detect(settings: Settings, docker_client_factory) -> str:
    from tasks import pg_docker

    if pg_docker.engine_answers(docker_client_factory):
        return "docker"
    if find_binaries(settings.postgres.local.bin_dir):
        return "local"
    raise UserError("no Docker engine answers and no PostgreSQL server binaries were found: "
                    "install Docker, or `apt-get install postgresql` (or set postgres.local.bin_dir), "
                    "or point postgres.provider=external at a server")


def _choice_file(settings: Settings) -> Path:
    return settings.state_path / "postgres" / "provider"
