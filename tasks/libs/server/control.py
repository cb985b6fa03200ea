"""Start, stop and query `mlflow server` as a process group we own."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.libs.core.credentials import backend_store_uri, known_secrets
from tasks.libs.core.databases import sqlite_connection
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import (
    ProcessRecord,
    is_alive,
    port_holder,
    port_is_free,
    start_group,
    stop_group,
    tail,
)
from tasks.libs.core.programs import require_module
from tasks.libs.core.redact import redact
from tasks.libs.core.settings import Settings
from tasks.libs.core.state import ensure_state_dir
from tasks.libs.core.waits import wait_ready, wait_until
from tasks.libs.postgres.connection import check_reachable
from tasks.libs.server.auth import basic_auth_header
from tasks.libs.server.command import is_loopback, metrics_dir, server_command, server_env
from tasks.libs.server.probes import health, store_answers
from tasks.libs.server.sidecars import (
    artifact_services_status,
    start_artifact_services,
    stop_artifact_services,
)


@dataclass
class ServerPaths:
    pid_file: Path
    log_file: Path

    @classmethod
    def of(cls, settings: Settings) -> ServerPaths:
        run = settings.state_path / "server"
        return cls(pid_file=run / "server.pid", log_file=run / "server.log")


@dataclass
class ServerRecord(ProcessRecord):
    """The server's pid file: its identity plus what status, stop and the pipelines need."""

    backend: str
    host: str
    port: int
    url: str
    store: str  # masked
    log: str
    stock: bool = False


@dataclass
class StartResult:
    record: ServerRecord
    seconds: float
    reused: bool
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # what else started: the embedded S3, the artifacts server

    @property
    def backend(self) -> str:
        return self.record.backend


def start_server(settings: Settings, *, stock: bool = False) -> StartResult:
    """Start the server (or reuse ours if it already runs on this backend) and wait until ready.

    stock=True starts MLflow as a plain `pip install mlflow` runs it (see server.command): the
    baseline the bench measures ours against. It gets no WAL switch, no fallback, no auth.
    """
    paths = ServerPaths.of(settings)
    current = running_record(settings)
    if current:
        if current.backend != settings.backend:
            raise UserError(
                f"the server already runs on {current.backend} (pid {current.pid});"
                " stop it first or use `inv server.restart`"
            )
        return StartResult(current, 0.0, True, [])

    cfg = settings.server
    if not port_is_free(cfg.host, cfg.port):
        raise UserError(
            f"port {cfg.port} on {cfg.host} is in use by {port_holder(cfg.port)}; "
            "stop that or pick another port (--port)"
        )
    warnings = [] if stock else bind_warnings(settings)
    ensure_state_dir(settings)  # before anything made inside it could make it with the default mode
    if cfg.metrics and not stock:
        require_module("prometheus_flask_exporter", "server.metrics")  # without it every worker crashes
    if settings.backend == "postgres":
        settings = _postgres_or_fallback(settings, warnings, fallback=cfg.fallback_to_sqlite and not stock)
    if settings.backend == "sqlite":
        prepare_sqlite(settings.sqlite_file, wal=settings.sqlite.wal and not stock)

    if settings.artifacts.store == "local":
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if cfg.metrics and not stock:
        prepare_metrics_dir(metrics_dir(settings))
    started = time.monotonic()
    notes = [] if stock else start_artifact_services(settings, "server")
    proc = start_group(
        server_command(settings, stock=stock),
        env=server_env(settings, stock=stock),
        log_path=paths.log_file,
        cwd=settings.state_path,
    )
    record = ServerRecord.of(
        proc.pid,
        backend=settings.backend,
        host=cfg.host,
        port=cfg.port,
        url=cfg.url,
        store=backend_store_uri(settings),
        log=str(paths.log_file),
        stock=stock,
    )
    record.write(paths.pid_file)
    headers = {} if stock else basic_auth_header(settings)

    def probe() -> str | None:
        if proc.poll() is not None:
            raise UserError("the server exited during start-up")
        if not health(cfg.url):
            return "/health does not answer"
        return None if store_answers(cfg.url, headers=headers) else "/health answers, a store call does not"

    try:
        wait_ready(probe, timeout=cfg.start_timeout, what="the server")
    except UserError as exc:
        stopped = "" if proc.poll() is not None else "; stopped it"
        stop_group(record.pgid, grace=cfg.stop_grace)
        paths.pid_file.unlink(missing_ok=True)
        if not stock:
            stop_artifact_services(settings, "server")
        raise UserError(f"{exc}{stopped}\n--- last lines of {paths.log_file} ---\n{log_tail(settings, 15)}") from None
    return StartResult(record, time.monotonic() - started, False, warnings, notes)


def _postgres_or_fallback(settings: Settings, warnings: list[str], *, fallback: bool) -> Settings:
    """The settings to start with: PostgreSQL when it answers, else SQLite if allowed, else why not."""
    problem = check_reachable(settings)
    if problem is None:
        return settings
    if fallback:
        warnings.append(
            f"WARNING: PostgreSQL is not usable ({problem}); FALLING BACK TO SQLITE at {settings.sqlite_file}"
        )
        return settings.model_copy(update={"backend": "sqlite"})
    if "authentication failed" in problem:
        raise UserError(
            f"PostgreSQL refused the login ({problem}); set MLFLOW_OPS_POSTGRES__PASSWORD "
            "to the database's password, or `inv db.reset --yes --wipe` to start over"
        )
    raise UserError(f"PostgreSQL is not usable ({problem}); run `inv db.start` first")


def stop_server(settings: Settings) -> str:
    """Stop our server's whole process group, then what it held for artifacts; what happened."""
    return "; ".join([_stop_tracking_server(settings), *stop_artifact_services(settings, "server")])


def _stop_tracking_server(settings: Settings) -> str:
    paths = ServerPaths.of(settings)
    record = ServerRecord.read(paths.pid_file)
    if record is None:
        return "the server is not running (no pid file)"
    if not is_alive(record):
        paths.pid_file.unlink(missing_ok=True)
        return f"the server is not running (removed stale pid file for pid {record.pid})"
    how = stop_group(record.pgid, grace=settings.server.stop_grace)
    paths.pid_file.unlink(missing_ok=True)
    wait_until(lambda: port_is_free(record.host, record.port), timeout=10)
    return f"stopped the server (pid {record.pid}, {how})"


def prepare_metrics_dir(path: Path) -> None:
    """Create prometheus_client's multiprocess folder, emptied: every worker leaves files there
    (counter_<pid>.db, ...) that a new server would add to its own counts."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for leftover in path.iterdir():
        if leftover.is_file():
            leftover.unlink()


def running_record(settings: Settings) -> ServerRecord | None:
    """Our live server's record; a stale pid file (process gone or pid reused) is removed."""
    return ServerRecord.live(ServerPaths.of(settings).pid_file)


def server_status(settings: Settings) -> dict:
    record = running_record(settings)
    if record is None:
        return {"running": False}
    return {
        "running": True,
        "pid": record.pid,
        "uptime_s": round(time.time() - record.started_at),
        "backend": record.backend,
        "store": record.store,
        "url": record.url,
        "healthy": health(record.url),
        "log": record.log,
        **artifact_services_status(settings),
    }


def log_tail(settings: Settings, lines: int) -> str:
    """The end of the server's log with every secret the settings know masked."""
    return redact(tail(ServerPaths.of(settings).log_file, lines), known_secrets(settings))


def prepare_sqlite(path: Path, *, wal: bool) -> None:
    """Create the file's folder and switch it to WAL once (the mode persists in the file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if not wal:
            return
        with sqlite_connection(path) as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as exc:
        raise UserError(f"cannot use SQLite file {path} ({exc}); fix sqlite.path or move the file away") from None


def bind_warnings(settings: Settings) -> list[str]:
    if is_loopback(settings.server.host):
        return []
    auth = (
        "sign-in is required (basic auth)"
        if settings.server.auth.enabled
        else "anyone who reaches it can read and change runs: consider server.auth.enabled"
    )
    return [f"WARNING: the server listens on {settings.server.host}, reachable from other machines; {auth}"]
