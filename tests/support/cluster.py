"""Clusters for tests: hermetic settings on the session's PostgreSQL, and clients that log through them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests

from tasks.libs.core.processes import free_port, free_ports_in_a_row
from tasks.libs.core.settings import Settings
from tasks.libs.postgres.connection import ensure_database, pg_connection
from tests.support.settings import PG_PASSWORD, make_settings, make_state_dir


def cluster_settings(
    pg: Settings, database: str, overrides: dict[str, object] | None = None, replicas: int = 2
) -> Settings:
    """A state dir and free ports of their own, on the session's PostgreSQL and a database of its own."""
    values = {
        "backend": "postgres",
        "postgres.port": pg.postgres.port,
        "postgres.password": PG_PASSWORD,
        "postgres.database": database,
        "cluster.replicas": replicas,
        "cluster.first_port": free_ports_in_a_row(replicas),
        "cluster.lb.port": free_port(),
        "cluster.lb.stats_port": free_port(),
        "cluster.pgbouncer.port": free_port(),
        "cluster.read_replica.port": free_port(),
        "monitoring.postgres_exporter.port": free_port(),
        "artifacts.s3.port": free_port(),
        "artifacts.artifacts_server.port": free_port(),
        "server.workers": 2,
        **(overrides or {}),
    }
    settings = make_settings(make_state_dir(), **values)
    ensure_database(settings)
    return settings


@dataclass
class Logged:
    """What clients logged: per run, the steps acknowledged (HTTP 200) and the calls that failed."""

    acked: dict[str, list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(len(steps) for steps in self.acked.values())


def log_through(url: str, experiment_id: str, *, clients: int, calls: int, verify: str | bool = True) -> Logged:
    """clients threads, each a run of its own and calls log-metric requests on one kept-alive
    connection; no retries, so that every failure is counted. verify: the CA of an https url."""
    logged = Logged()
    lock = threading.Lock()

    def client(n: int) -> None:
        with requests.Session() as http:
            # per request: REQUESTS_CA_BUNDLE in the environment would override a session's verify
            run = http.post(
                f"{url}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment_id}, timeout=60, verify=verify
            )
            run.raise_for_status()
            run_id = run.json()["run"]["info"]["run_id"]
            steps = []
            for step in range(calls):
                body = {"run_id": run_id, "key": "loss", "value": float(step), "timestamp": 0, "step": step}
                try:
                    answer = http.post(f"{url}/api/2.0/mlflow/runs/log-metric", json=body, timeout=60, verify=verify)
                    if answer.status_code == 200:
                        steps.append(step)
                    else:
                        with lock:
                            logged.errors.append(f"HTTP {answer.status_code}")
                except requests.RequestException as exc:
                    with lock:
                        logged.errors.append(type(exc).__name__)
            with lock:
                logged.acked[run_id] = steps

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    logged.seconds = time.monotonic() - began
    return logged


def stored_steps(settings: Settings, run_id: str) -> set[int]:
    """The steps of metric 'loss' the store holds for run_id (read from PostgreSQL itself)."""
    with pg_connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'loss'", (run_id,))
        return {int(row[0]) for row in cur.fetchall()}
