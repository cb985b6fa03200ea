"""full-check's optional cluster stage: 2 replicas behind HAProxy on full-check's own PostgreSQL,
the deployment checks through the load balancer, and a write read back through the other replica."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tasks.libs.checks.runner import run_checks
from tasks.libs.checks.storage import storage_arguments
from tasks.libs.cluster.orchestrate import cluster_up
from tasks.libs.cluster.plan import lb_url, replica_plans
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import free_port, free_ports_in_a_row
from tasks.libs.core.settings import Settings
from tasks.libs.postgres.connection import recreate_database
from tasks.libs.reporting.writers import write_reports

REPLICAS = 2
DATABASE = "mlflow_full_check_cluster"


def isolated_cluster(base: Settings, state_dir: str, pg_port: int) -> Settings:
    """base (the PostgreSQL layered settings) in full-check's state dir, on its PostgreSQL, free ports."""
    s = base.model_copy(deep=True, update={"state_dir": state_dir, "backend": "postgres"})
    s.postgres.port, s.postgres.database = pg_port, DATABASE
    s.postgres.docker.container += "-full-check"
    s.postgres.docker.volume += "-full-check"
    c = s.cluster
    c.replicas, c.first_port = REPLICAS, free_ports_in_a_row(REPLICAS, c.host)
    c.lb.port, c.lb.stats_port, c.pgbouncer.port, c.read_replica.port = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    )
    s.monitoring.postgres_exporter.port = free_port()
    c.redis.port = free_port()  # MLflow's job queues: never a user's cluster Redis
    s.artifacts.s3.port, s.artifacts.artifacts_server.port = free_port(), free_port()
    return s


def start_cluster(settings: Settings) -> str:
    recreate_database(settings)  # empty: replica 0 creates the schema alone
    result = cluster_up(settings, say=lambda _: None)
    return f"{REPLICAS} replicas ready behind {result.url} in {result.seconds:.1f} s"


def checks_through_the_balancer(settings: Settings, out_dir: Path, browser: str | None) -> str:
    kwargs: dict[str, Any] = storage_arguments(settings)
    if browser is not None:
        kwargs["browser"] = browser
    result = run_checks(
        lb_url(settings), report_dir=out_dir, store_uri=backend_store_uri(settings, reveal=True), **kwargs
    )
    write_reports(result, out_dir)
    if result.failed:
        raise UserError("failed: " + ", ".join(f"{c.name} ({c.reason})" for c in result.failed))
    return f"{len(result.checks)} checks through the load balancer, none failed"


def write_here_read_there(settings: Settings, rounds: int = 10) -> str:
    """Each write through one replica is read back through the other: no replica serves stale data."""
    plans = replica_plans(settings)
    made = requests.post(
        f"{plans[0].url}/api/2.0/mlflow/experiments/create", json={"name": "full-check-cluster"}, timeout=30
    )
    made.raise_for_status()
    experiment = made.json()["experiment_id"]
    for i in range(rounds):
        writer, reader = plans[i % len(plans)], plans[(i + 1) % len(plans)]
        run = requests.post(f"{writer.url}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment}, timeout=30)
        run_id = run.json()["run"]["info"]["run_id"]
        body = {"run_id": run_id, "key": "m", "value": float(i), "timestamp": 0, "step": i}
        requests.post(f"{writer.url}/api/2.0/mlflow/runs/log-metric", json=body, timeout=30).raise_for_status()
        history = requests.get(
            f"{reader.url}/api/2.0/mlflow/metrics/get-history", params={"run_id": run_id, "metric_key": "m"}, timeout=30
        ).json()
        if [m["value"] for m in history.get("metrics", [])] != [float(i)]:
            raise UserError(f"a metric written through {writer.name} was not read back through {reader.name}")
    return f"{rounds} writes, each read back through the other replica"
