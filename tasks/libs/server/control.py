"""Start, stop and query `mlflow server` as a process group we own: `server.start`'s server and,
through launch_server, every cluster replica.

"Running" is the whole group (core.managed): when the `mlflow server` process dies, uvicorn and
its workers live on and keep the port, so such a server is still ours to show and to stop.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.libs.core.credentials import backend_store_uri, known_secrets
from tasks.libs.core.databases import sqlite_connection
from tasks.libs.core.errors import UserError
from tasks.libs.core.managed import Launch, Listener, ManagedProcess, refuse_busy, uptime
from tasks.libs.core.processes import ProcessRecord
from tasks.libs.core.programs import require_module
from tasks.libs.core.settings import Settings
from tasks.libs.core.state import ensure_state_dir
from tasks.libs.core.tls import client_ca, ensure_tls
from tasks.libs.postgres.connection import check_reachable
from tasks.libs.server.auth import basic_auth_header
from tasks.libs.server.command import is_loopback, metrics_dir, server_command, server_env
from tasks.libs.server.probes import health, store_answers
from tasks.libs.server.sidecars import (
    artifact_services_status,
    start_artifact_services,
    stop_artifact_services,
)

PORT_FIX = "pick another port (--port)"


@dataclass
class ServerPaths:
    pid_file: Path
    log_file: Path

    @classmethod
    def of(cls, settings: Settings) -> ServerPaths:
        return cls.in_folder(settings.state_path / "server")

    @classmethod
    def in_folder(cls, folder: Path) -> ServerPaths:
        return cls(pid_file=folder / "server.pid", log_file=folder / "server.log")


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


def server_process(
    settings: Settings, *, name: str = "the server", paths: ServerPaths | None = None
) -> ManagedProcess[ServerRecord]:
    """An `mlflow server` as a managed process: server.start's by default, a replica's with its name and folder."""
    paths = paths or ServerPaths.of(settings)
    return ManagedProcess(
        name,
        pid_file=paths.pid_file,
        log_file=paths.log_file,
        record=ServerRecord,
        grace=settings.server.stop_grace,
        secrets=lambda: known_secrets(settings),  # read when shown: start-up may generate one
    )


def launch_server(
    settings: Settings,
    process: ManagedProcess[ServerRecord],
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    port_fix: str,
    stock: bool = False,
    metrics_path: Path | None = None,
) -> ServerRecord:
    """The one way an `mlflow server` starts, server.start's and each replica's: server_command for
    these settings, ready once /health and a store call answer, stopped whole when it is not.

    The caller gives what differs: the environment, the folder, the timeout, what to do about a
    busy port, and the metrics folder (a replica keeps its own).
    """
    cfg = settings.server
    process.pid_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # before anything made inside it
    if cfg.metrics and not stock:
        prepare_metrics_dir(metrics_path or metrics_dir(settings))
    headers = {} if stock else basic_auth_header(settings)
    ca = client_ca(settings)

    def ready() -> str | None:
        if not health(cfg.url, ca=ca):
            return "/health does not answer"
        return None if store_answers(cfg.url, headers=headers, ca=ca) else "/health answers, a store call does not"

    store, log = backend_store_uri(settings), str(process.log_file)
    launch = Launch(
        command=server_command(settings, stock=stock, metrics_path=metrics_path),
        env=env,
        cwd=cwd,
        ready=ready,
        timeout=timeout,
        listeners=[Listener(cfg.host, cfg.port, port_fix)],
        fields=dict(
            backend=settings.backend, host=cfg.host, port=cfg.port, url=cfg.url, store=store, log=log, stock=stock
        ),
    )
    return process.start(launch)


def start_server(settings: Settings, *, stock: bool = False) -> StartResult:
    """Start the server (or reuse ours if it already runs on this backend) and wait until ready.

    stock=True starts MLflow as a plain `pip install mlflow` runs it (see server.command): the
    baseline the bench measures ours against. It gets no WAL switch, no fallback, no auth.
    """
    process = server_process(settings)
    current = process.running()
    if current:
        return StartResult(_reusable(process, current, settings), 0.0, True, [])

    cfg = settings.server
    refuse_busy([Listener(cfg.host, cfg.port, PORT_FIX)])  # before a fallback or an S3 is started for nothing
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
    tls_notes = ensure_tls(settings)[1] if cfg.tls.enabled else []  # before the artifacts server, which uses it too
    started = time.monotonic()
    notes = tls_notes + ([] if stock else start_artifact_services(settings, "server"))
    try:
        record = launch_server(
            settings,
            process,
            env=server_env(settings, stock=stock),
            cwd=settings.state_path,
            timeout=cfg.start_timeout,
            port_fix=PORT_FIX,
            stock=stock,
        )
    except UserError:
        if not stock:
            stop_artifact_services(settings, "server")
        raise
    return StartResult(record, time.monotonic() - started, False, warnings, notes)


def _reusable(process: ManagedProcess[ServerRecord], current: ServerRecord, settings: Settings) -> ServerRecord:
    """Our running server when start may hand it back. A group whose `mlflow server` died is refused:
    it may still answer, but it is no longer the server start would give; stopping what serves
    clients is the user's call."""
    if not process.leader_alive(current):
        raise UserError(
            f"the server's first process (pid {current.pid}) is gone while its workers still hold port "
            f"{current.port}; `inv server.stop` stops them all, then start it again"
        )
    if current.backend != settings.backend:
        raise UserError(
            f"the server already runs on {current.backend} (pid {current.pid});"
            " stop it first or use `inv server.restart`"
        )
    return current


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
    process = server_process(settings)
    record = process.record()
    ports = [Listener(record.host, record.port, PORT_FIX)] if record else []
    return "; ".join([process.stop(listeners=ports), *stop_artifact_services(settings, "server")])


def prepare_metrics_dir(path: Path) -> None:
    """Create prometheus_client's multiprocess folder, emptied: every worker leaves files there
    (counter_<pid>.db, ...) that a new server would add to its own counts."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for leftover in path.iterdir():
        if leftover.is_file():
            leftover.unlink()


def running_record(settings: Settings) -> ServerRecord | None:
    """Our server's record while any process of its group lives; a stale pid file is removed."""
    return server_process(settings).running()


def server_status(settings: Settings) -> dict:
    process = server_process(settings)
    record = process.running()
    if record is None:
        return {"running": False}
    members = process.members(record)
    leader = any(proc.pid == record.pid for proc in members)
    return {
        "running": True,
        "pid": record.pid,
        "leader": "alive" if leader else "gone (its workers live on: `inv server.stop` stops them)",
        "processes": len(members),
        "uptime_s": round(uptime(record)),
        "backend": record.backend,
        "store": record.store,
        "url": record.url,
        "healthy": health(record.url, ca=client_ca(settings)),
        **tls_status(settings, record.url),
        "log": record.log,
        **artifact_services_status(settings),
    }


def tls_status(settings: Settings, url: str) -> dict[str, str]:
    """What a client of an https URL needs to know: the CA file to trust."""
    if not url.startswith("https:"):
        return {}
    ca = client_ca(settings)
    return {"tls ca": f"{ca} (clients: MLFLOW_TRACKING_SERVER_CERT_PATH={ca})" if ca else "the system's trust store"}


def log_tail(settings: Settings, lines: int) -> str:
    """The end of the server's log with every secret the settings know masked."""
    return server_process(settings).log_tail(lines)


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
