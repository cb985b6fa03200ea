"""What the tool writes for HAProxy, PgBouncer and Prometheus."""

from __future__ import annotations

import pytest

from tasks.libs.cluster.haproxy import render
from tasks.libs.cluster.pgbouncer import connection_budget, pool_sizes, render_ini
from tasks.libs.cluster.plan import replica_plans
from tasks.libs.core.errors import UserError
from tasks.libs.monitoring.prometheus import ScrapeTargets, alert_rules, scrape_config
from tests.support.settings import PG_PASSWORD, make_settings


def test_haproxy_config_checks_health_and_never_resends_what_reached_a_replica(tmp_path):
    settings = make_settings(tmp_path, backend="postgres", **{"cluster.replicas": 3, "cluster.lb.port": 4120})
    text = render(settings, replica_plans(settings), tmp_path / "haproxy.sock")
    assert "bind 127.0.0.1:4120" in text and "balance roundrobin" in text
    assert "http-check send meth GET uri /health ver HTTP/1.1 hdr Host 127.0.0.1" in text
    assert "retry-on conn-failure" in text and "option redispatch 1" in text
    assert [line.split()[1] for line in text.splitlines() if line.strip().startswith("server ")] == ["r0", "r1", "r2"]
    assert "prometheus-exporter" in text and f"stats socket {tmp_path / 'haproxy.sock'} mode 600" in text


def test_pgbouncer_pool_comes_from_the_budget_and_clients_always_fit(tmp_path):
    settings = make_settings(tmp_path, backend="postgres", **{"postgres.password": PG_PASSWORD})
    budget = connection_budget(100, 3)
    assert budget == 92
    sizes = pool_sizes(settings, budget=budget, worst_case_clients=160, cpus=2)
    assert sizes["default_pool_size"] == sizes["max_db_connections"] == 4
    assert sizes["max_client_conn"] == 170
    ini = render_ini(settings, auth_file=tmp_path / "userlist.txt", sizes=sizes)
    assert "pool_mode = transaction" in ini and "auth_type = scram-sha-256" in ini
    assert f"mlflow = host=127.0.0.1 port={settings.postgres.port} dbname=mlflow" in ini
    assert PG_PASSWORD not in ini and "p%40ss" not in ini
    too_big = make_settings(tmp_path, backend="postgres", **{"cluster.pgbouncer.pool_size": 95})
    with pytest.raises(UserError, match="more than PostgreSQL can give the servers"):
        pool_sizes(too_big, budget=budget, worst_case_clients=10, cpus=2)


def test_alert_rules_cover_down_errors_latency_and_connections(tmp_path):
    monitoring = make_settings(tmp_path).monitoring
    names = [
        r["alert"] for r in alert_rules(monitoring, haproxy_backend="replicas", postgres=True)["groups"][0]["rules"]
    ]
    for expected in ("MlflowServerDown", "MlflowHigh5xxRate", "MlflowHighP95Latency", "PostgresConnectionsNearLimit"):
        assert expected in names
    single = [r["alert"] for r in alert_rules(monitoring, haproxy_backend=None, postgres=False)["groups"][0]["rules"]]
    assert not any(name.startswith(("Haproxy", "Postgres")) for name in single)
    config = scrape_config(ScrapeTargets(["127.0.0.1:3121", "127.0.0.1:3122"], haproxy="127.0.0.1:3129"), monitoring)
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs == {"mlflow": ["127.0.0.1:3121", "127.0.0.1:3122"], "haproxy": ["127.0.0.1:3129"]}
    assert config["rule_files"] == ["mlflow-ops.rules.yml"]
