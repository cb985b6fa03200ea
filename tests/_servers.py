"""Throwaway `mlflow server` processes for the deployment check tests, broken on purpose if need be.

Each server gets its own temp dir, free port and SQLite file, and runs in its own process
group so that stopping it stops its workers too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests


@dataclass
class ThrowawayServer:
    url: str
    store_uri: str
    db_path: Path
    artifacts_dir: Path
    log_path: Path
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_throwaway_server(base: Path, *, artifacts_dir: Path | None = None, timeout: float = 180) -> ThrowawayServer:
    """Start `mlflow server` on SQLite in base and wait until /health answers."""
    base.mkdir(parents=True, exist_ok=True)
    db_path = base / "mlflow.db"
    artifacts_dir = artifacts_dir or base / "artifacts"
    port = free_port()
    log_path = base / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{db_path}", "--artifacts-destination", str(artifacts_dir),
    ]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=base
        )
    server = ThrowawayServer(f"http://127.0.0.1:{port}", f"sqlite:///{db_path}", db_path, artifacts_dir, log_path, process)
    try:
        _wait_healthy(server, timeout)
    except BaseException:
        stop_throwaway_server(server)
        raise
    return server


def _wait_healthy(server: ThrowawayServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.process.returncode}: {_tail(server.log_path)}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)  # polling interval, not a wait for readiness
    raise RuntimeError(f"mlflow server not healthy after {timeout:g} s: {_tail(server.log_path)}")


def stop_throwaway_server(server: ThrowawayServer, grace: float = 20) -> None:
    """SIGTERM the server's process group, SIGKILL it after grace seconds."""
    pgid = server.process.pid  # start_new_session: the group id is the leader's pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)  # the leader may be gone while a worker lingers
    except ProcessLookupError:
        pass
    server.process.wait(timeout=10)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
