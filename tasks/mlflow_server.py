"""Start, stop and query `mlflow server` as a process group we own."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks import postgres
from tasks.cli import UserError
from tasks.processes import (ProcessRecord, is_alive, port_holder, port_is_free, record_for,
                             start_group, stop_group, tail, wait_until)
from tasks.server_auth import auth_server_env, basic_auth_header
from tasks.credentials import backend_store_uri, known_secrets
from tasks.settings import Settings


@dataclass
class ServerPaths:
    pid_file: Path
    log_file: Path

    @classmethod
    def of(cls, settings: Settings) -> ServerPaths:
        run = settings.state_path / "server"
        return cls(pid_file=run / "server.pid", log_file=run / "server.log")


@dataclass
class StartResult:
    record: ProcessRecord
    seconds: float
    reused: bool
    backend: str
    warnings: list[str]


def start_server(settings: Settings) -> StartResult:
    """Start the server (or reuse ours if it already runs on this backend) and wait until ready."""
    paths = ServerPaths.of(settings)
    current = running_record(settings)
    if current:
        if current.details.get("backend") != settings.backend:
            raise UserError(f"the server already runs on {current.details.get('backend')} (pid {current.pid});"
                            " stop it first or use `inv server.restart`")
        return StartResult(current, 0.0, True, settings.backend, [])

    cfg = settings.server
    if not port_is_free(cfg.host, cfg.port):
        raise UserError(f"port {cfg.port} on {cfg.host} is in use by {port_holder(cfg.port)}; "
                        "stop that or pick another port (--port)")
    warnings = _bind_warnings(settings)
    backend = settings.backend
    if backend == "postgres":
        problem = postgres.check_reachable(settings)
        if problem and cfg.fallback_to_sqlite:
            warnings.append(f"WARNING: PostgreSQL is not usable ({problem}); FALLING BACK TO SQLITE "
                            f"at {settings.sqlite_file}")
            settings = settings.model_copy(update={"backend": "sqlite"})
            backend = "sqlite"
        elif problem and "authentication failed" in problem:
            raise UserError(f"PostgreSQL refused the login ({problem}); set MLFLOW_OPS_POSTGRES__PASSWORD "
                            "to the database's password, or `inv db.reset --yes --wipe` to start over")
        elif problem:
            raise UserError(f"PostgreSQL is not usable ({problem}); run `inv db.start` first")
    if backend == "sqlite":
        prepare_sqlite(settings.sqlite_file, wal=settings.sqlite.wal)

    # Others may traverse the state dir (Postgres runs as its own OS user), not list it.
    settings.state_path.mkdir(parents=True, exist_ok=True, mode=0o711)
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.monotonic()
    proc = start_group(server_command(settings), env=server_env(settings), log_path=paths.log_file,
                       cwd=settings.state_path)
    record = record_for(proc.pid, {"backend": backend, "url": cfg.url,
                                   "store": backend_store_uri(settings), "log": str(paths.log_file)})
    record.write(paths.pid_file)
    try:
        wait_ready(cfg.url, proc_alive=lambda: proc.poll() is None, timeout=cfg.start_timeout,
                   headers=basic_auth_header(settings))
    except UserError as exc:
        stop_group(record.pgid, grace=cfg.stop_grace)
        paths.pid_file.unlink(missing_ok=True)
        log = tail(paths.log_file, 15, secrets=known_secrets(settings))
        raise UserError(f"{exc}\n--- last lines of {paths.log_file} ---\n{log}") from None
    return StartResult(record, time.monotonic() - started, False, backend, warnings)


def stop_server(settings: Settings) -> str:
    """Stop our server's whole process group; a message saying what happened."""
    paths = ServerPaths.of(settings)
    record = ProcessRecord.read(paths.pid_file)
    if record is None:
        return "the server is not running (no pid file)"
    if not is_alive(record):
        paths.pid_file.unlink(missing_ok=True)
        return f"the server is not running (removed stale pid file for pid {record.pid})"
    how = stop_group(record.pgid, grace=settings.server.stop_grace)
    paths.pid_file.unlink(missing_ok=True)
    host, port = settings.server.host, record_port(record, settings)
    wait_until(lambda: port_is_free(host, port), timeout=10)
    return f"stopped the server (pid {record.pid}, {how})"


def running_record(settings: Settings) -> ProcessRecord | None:
    """Our live server's record; a stale pid file (process gone or pid reused) is removed."""
    paths = ServerPaths.of(settings)
    record = ProcessRecord.read(paths.pid_file)
    if record and is_alive(record):
        return record
    if paths.pid_file.exists():
        paths.pid_file.unlink()
    return None


def server_status(settings: Settings) -> dict:
    record = running_record(settings)
    if record is None:
        return {"running": False}
    url = record.details["url"]
    return {"running": True, "pid": record.pid, "uptime_s": round(time.time() - record.started_at),
            "backend": record.details["backend"], "store": record.details["store"], "url": url,
            "healthy": health(url), "log": record.details["log"]}


def server_command(settings: Settings, *, stock: bool = False) -> list[str]:
    cfg = settings.server
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", cfg.host, "--port", str(cfg.port)]
    if stock:
        return cmd
    cmd += ["--workers", str(cfg.workers), "--artifacts-destination", str(settings.artifacts_dir),
            "--allowed-hosts", allowed_hosts(settings)]
    if cfg.uvicorn_opts:
        cmd += ["--uvicorn-opts", cfg.uvicorn_opts]
    if cfg.auth.enabled:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def server_env(settings: Settings) -> dict[str, str]:
    """The server's environment; the store URI travels here, never in argv."""
    env = dict(os.environ)
    env.update(settings.server.env)
    env["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri(settings, reveal=True)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if settings.server.job_execution else "false"
    if settings.server.auth.enabled:
        env.update(auth_server_env(settings))
    return env


def allowed_hosts(settings: Settings) -> str:
    cfg = settings.server
    if cfg.allowed_hosts:
        return ",".join(cfg.allowed_hosts)
    names = ["localhost", "127.0.0.1"]
    if cfg.host not in ("127.0.0.1", "localhost", "0.0.0.0", "::"):
        names.append(cfg.host)
    return ",".join(n for name in names for n in (name, f"{name}:{cfg.port}"))


def prepare_sqlite(path: Path, *, wal: bool) -> None:
    """Create the file's folder and switch it to WAL once (the mode persists in the file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if not wal:
            return
        conn = sqlite3.connect(path)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as exc:
        raise UserError(f"cannot use SQLite file {path} ({exc}); fix sqlite.path or move the file away") from None


def wait_ready(url: str, *, proc_alive, timeout: float, headers: dict[str, str] | None = None) -> None:
    """Ready = /health answers and a real store call succeeds. Fails at once if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc_alive():
            raise UserError("the server exited during start-up")
        if health(url) and store_answers(url, headers=headers):
            return
        time.sleep(0.2)
    raise UserError(f"the server did not become ready within {timeout:.0f} s (stopped it)")


def health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def store_answers(url: str, *, headers: dict[str, str] | None = None) -> bool:
    body = json.dumps({"max_results": 1}).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search", data=body,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def record_port(record: ProcessRecord, settings: Settings) -> int:
    return int(record.details.get("url", "").rsplit(":", 1)[-1] or settings.server.port)


def _bind_warnings(settings: Settings) -> list[str]:
    if is_loopback(settings.server.host):
        return []
    auth = "sign-in is required (basic auth)" if settings.server.auth.enabled else \
        "anyone who reaches it can read and change runs: consider server.auth.enabled"
    return [f"WARNING: the server listens on {settings.server.host}, reachable from other machines; {auth}"]


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
