"""Logging clients in processes of their own, and what the store holds of what they logged."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.libs.core.databases import sqlite_readonly
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_until
from tasks.libs.postgres.connection import pg_connection

CLIENT = Path(__file__).with_name("metric_client.py")


@dataclass
class ClientLog:
    name: str
    out: Path
    proc: subprocess.Popen
    run_id: str | None = None
    ok: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)
    attempted: set[int] = field(default_factory=set)
    setup_failed: bool = False

    def refresh(self) -> ClientLog:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return self
        for line in text.split("\n")[:-1]:  # the part after the last newline may be half-written
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "RUN":
                self.run_id = parts[1]
            elif parts[0] == "SETUP-FAILED":
                self.setup_failed = True
            elif parts[0] == "OK" and len(parts) == 2 and parts[1].isdigit():
                self.ok.add(int(parts[1]))
                self.attempted.add(int(parts[1]))
            elif parts[0] == "FAIL" and len(parts) == 3 and parts[1].isdigit():
                self.failed[int(parts[1])] = parts[2]
                self.attempted.add(int(parts[1]))
        return self


class Clients:
    """N logging clients against url; stop() makes them finish and waits for them."""

    def __init__(self, url: str, folder: Path, count: int, *, max_steps: int = 10**9, retries: int = 0):
        self.folder = folder
        self.stop_file = folder / "clients.stop"
        env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(retries), MLFLOW_HTTP_REQUEST_TIMEOUT="60")
        self.logs = []
        for i in range(count):
            out = folder / f"client-{i}.log"
            proc = subprocess.Popen(
                [sys.executable, str(CLIENT), url, str(out), str(self.stop_file), f"client-{i}", str(max_steps)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            self.logs.append(ClientLog(f"client-{i}", out, proc))

    def refresh(self) -> list[ClientLog]:
        return [log.refresh() for log in self.logs]

    def wait_for(self, condition, timeout: float) -> bool:
        """Poll until condition(log) holds for every client (or one client gives up)."""

        def check():
            logs = self.refresh()
            if any(log.setup_failed or (log.proc.poll() not in (None, 0)) for log in logs):
                return True
            return all(condition(log) for log in logs)

        return wait_until(check, timeout=timeout, interval=0.2) and all(condition(log) for log in self.refresh())

    def join(self, timeout: float = 240) -> list[ClientLog]:
        """Wait for every client to finish by itself (max_steps reached)."""
        deadline = time.monotonic() + timeout
        for log in self.logs:
            log.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return self.refresh()

    def stop(self, timeout: float = 120) -> list[ClientLog]:
        self.stop_file.touch()
        for log in self.logs:
            try:
                log.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.proc.kill()
                log.proc.wait()
        return self.refresh()

    def kill(self) -> None:
        for log in self.logs:
            if log.proc.poll() is None:
                log.proc.kill()
                log.proc.wait()


def stored_steps(settings: Settings, run_ids: list[str]) -> dict[str, set[int]]:
    """Steps of metric "m" per run, read straight from the backend store."""
    query = "SELECT run_uuid, step FROM metrics WHERE key = 'm' AND run_uuid IN ({})"
    found: dict[str, set[int]] = {run: set() for run in run_ids}
    if settings.backend == "sqlite":
        with sqlite_readonly(settings.sqlite_file) as conn:
            rows = conn.execute(query.format(",".join("?" * len(run_ids))), run_ids).fetchall()
    else:
        with pg_connection(settings) as pg, pg.cursor() as cur:
            cur.execute(query.format(",".join(["%s"] * len(run_ids))), run_ids)
            rows = cur.fetchall()
    for run, step in rows:
        found[run].add(int(step))
    return found


def lost_acknowledged(logs: list[ClientLog], settings: Settings) -> dict[str, list[int]]:
    """For each client, the steps whose call returned success but are not in the store."""
    run_ids = {log.name: str(log.run_id) for log in logs}  # every client created its run before logging
    stored = stored_steps(settings, list(run_ids.values()))
    lost = {log.name: sorted(log.ok - stored[run_ids[log.name]]) for log in logs}
    return {name: steps for name, steps in lost.items() if steps}
