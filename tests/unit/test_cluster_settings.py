"""Cluster settings: refusals in one line, and what the replicas are told."""

from __future__ import annotations

import pytest

from tasks.libs.cluster.plan import lb_url, replica_plans, require_cluster_backend
from tasks.libs.cluster.replicas import (
    StoreRoute,
    pool_fitting_budget,
    replica_env,
    replica_settings,
    worst_case_connections,
)
from tasks.libs.core.errors import ConfigError, UserError
from tasks.libs.core.settings import ports_in_use
from tasks.libs.server.command import server_command
from tests.support.settings import PG_PASSWORD, make_settings


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_sqlite_is_refused_for_a_cluster(tmp_path):
    with pytest.raises(UserError) as exc:
        require_cluster_backend(make_settings(tmp_path, backend="sqlite"))
    assert "a cluster needs backend postgres" in one_line(exc)
    require_cluster_backend(make_settings(tmp_path, backend="postgres"))  # no error


def test_read_replica_needs_the_local_provider(tmp_path):
    settings = make_settings(
        tmp_path,
        backend="postgres",
        **{
            "postgres.provider": "external",
            "postgres.uri": "postgresql://u:secret@db:5432/m",
            "cluster.read_replica.enabled": True,
        },
    )
    with pytest.raises(UserError) as exc:
        require_cluster_backend(settings)
    assert "cluster.read_replica needs postgres.provider local" in one_line(exc)
    assert "secret" not in str(exc.value)


@pytest.mark.parametrize(
    "overrides, keys",
    [
        ({"server.port": 3120}, ("cluster.lb.port", "server.port")),
        (
            {"cluster.first_port": 3128, "cluster.replicas": 2},
            ("cluster.first_port (+1: replica r1)", "cluster.lb.stats_port"),
        ),
        (
            {"cluster.pgbouncer.enabled": True, "cluster.pgbouncer.port": 3110},
            ("cluster.pgbouncer.port", "postgres.port"),
        ),
        (
            {"artifacts.store": "s3", "artifacts.s3.port": 3117, "cluster.read_replica.enabled": True},
            ("artifacts.s3.port",),
        ),
        ({"monitoring.postgres_exporter.enabled": True, "monitoring.postgres_exporter.port": 3111}, ("server.port",)),
    ],
)
def test_port_collisions_are_refused_naming_both_keys(tmp_path, overrides, keys):
    values = {"server.port": 3111, "postgres.port": 3110, **overrides}
    with pytest.raises(ConfigError) as exc:
        make_settings(tmp_path, **values)
    message = one_line(exc)
    assert all(key in message for key in keys), message
    assert "give one of them another port" in message


def test_ports_of_pieces_that_are_off_do_not_collide(tmp_path):
    # PgBouncer off on the embedded S3's port: nobody's business
    make_settings(tmp_path, **{"cluster.pgbouncer.port": 3115, "artifacts.store": "s3"})


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("monitoring.scrape_interval", "15x", "is not a Prometheus duration"),
        ("monitoring.down_for", "30 seconds", "is not a Prometheus duration"),
        ("cluster.lb.retry_on", "conn-fail", "unknown HAProxy retry-on event"),
        ("cluster.replicas", 0, "cluster.replicas"),
        ("cluster.read_replica.name", "Bad-Name", "lower-case letters"),
    ],
)
def test_bad_cluster_and_monitoring_values_are_one_line(tmp_path, key, value, expected):
    with pytest.raises(ConfigError) as exc:
        make_settings(tmp_path, **{key: value})
    assert expected in one_line(exc)


def test_replicas_allow_the_load_balancer_and_get_the_store_without_password(tmp_path):
    settings = make_settings(
        tmp_path,
        backend="postgres",
        **{"postgres.password": PG_PASSWORD, "cluster.lb.port": 4120, "server.metrics": True},
    )
    r1 = replica_plans(settings)[1]
    assert (r1.name, r1.port, r1.url) == ("r1", 3122, "http://127.0.0.1:3122")
    assert lb_url(settings) == "http://127.0.0.1:4120"
    cmd = server_command(replica_settings(settings, r1), metrics_path=r1.metrics_dir)
    allowed = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert "127.0.0.1:4120" in allowed and "localhost:3122" in allowed
    assert cmd[cmd.index("--expose-prometheus") + 1] == str(tmp_path / "cluster" / "r1" / "prometheus")
    env = replica_env(settings, r1, StoreRoute("127.0.0.1", 6543, read_replica_port=6544, pool_env=(("X", "1"),)))
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("@127.0.0.1:6543/mlflow")
    assert env["MLFLOW_READ_REPLICA_BACKEND_STORE_URI"].endswith(":6544/mlflow")
    assert env["PGPASSWORD"] == PG_PASSWORD and env["X"] == "1"
    assert not any("p@ss" in arg or "p%40ss" in arg for arg in cmd)
    assert "p%40ss" not in env["MLFLOW_BACKEND_STORE_URI"] + env["MLFLOW_READ_REPLICA_BACKEND_STORE_URI"]


def test_pools_shrink_to_the_connection_budget_only_when_needed(tmp_path):
    settings = make_settings(tmp_path, backend="postgres")  # backends/postgres.yaml: pools of 10 + 10
    assert worst_case_connections(settings, 2) == 2 * 2 * 2 * 20
    size, overflow = pool_fitting_budget(settings, 2, budget=92) or (0, 0)
    assert worst_case_connections(settings, 2, (size, overflow)) <= 92 and size >= 1
    assert pool_fitting_budget(settings, 1, budget=1000) is None


def test_full_checks_cluster_runs_on_its_own_ports_database_and_postgres(tmp_path):
    from tasks.libs.pipeline.cluster_stage import DATABASE, isolated_cluster

    user = make_settings(tmp_path, backend="postgres", **{"server.port": 3111, "postgres.port": 3110})
    isolated = isolated_cluster(user, str(tmp_path / "full-check"), pg_port=45678)
    assert (isolated.postgres.port, isolated.postgres.database) == (45678, DATABASE)
    assert isolated.state_path == tmp_path / "full-check" and isolated.cluster.replicas == 2
    defaults = {3120, 3121, 3122, 3129, 3116, 3117, 3115, 3114, 3128}
    taken = {port for _, port in ports_in_use(isolated)}
    assert not taken & defaults, "full-check's cluster must not touch a user's cluster ports"


def test_replicas_run_huey_on_the_shared_redis_with_periodic_tasks_on_r0_only(tmp_path):
    from tasks.libs.cluster.plan import replica_plans
    from tasks.libs.cluster.redis import replica_job_env

    settings = make_settings(tmp_path, backend="postgres", **{"cluster.redis.port": 4555})
    r0, r1 = replica_plans(settings)[:2]
    base = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true", "MLFLOW_SERVER_JOB_EXECUTION_ENGINE": "executor"}
    first, second = replica_job_env(settings, r0, base), replica_job_env(settings, r1, base)
    assert (
        first["MLFLOW_SERVER_JOB_HUEY_REDIS_URL"]
        == second["MLFLOW_SERVER_JOB_HUEY_REDIS_URL"]
        == ("redis://127.0.0.1:4555/0")
    )
    assert (first["MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS"], second["MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS"]) == (
        "true",
        "false",
    )
    assert "MLFLOW_SERVER_JOB_EXECUTION_ENGINE" not in first  # the executor engine is single-replica
    off = make_settings(tmp_path, backend="postgres", **{"cluster.redis.enabled": False})
    assert replica_job_env(off, r0, base)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_the_redis_port_takes_part_in_the_port_collision_check(tmp_path):
    with pytest.raises(ConfigError, match="cluster.redis.port and server.port are both port 3111"):
        make_settings(tmp_path, **{"cluster.redis.port": 3111, "server.port": 3111})
