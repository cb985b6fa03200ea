"""Each guardrail refuses with one line that names the setting, and nothing is written."""

from __future__ import annotations

import pytest

from tasks.libs.core.errors import ConfigError
from tasks.libs.deploy.guardrails import host_allowed
from tasks.libs.deploy.writer import export, render
from tests.support.deploy import profile_settings
from tests.support.settings import make_settings

EXTERNAL_PG = {
    "backend": "postgres",
    "postgres.provider": "external",
    "postgres.uri": "postgresql://u@db.internal/mlflow",
}
EXTERNAL_S3 = {"artifacts.store": "s3", "artifacts.s3.provider": "external"}
DEFAULT_POOLS = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "10"}

REFUSALS = [
    ("sqlite, two replicas", "compose", {"deploy.replicas": 2}, "deploy.replicas = 2 with backend sqlite"),
    ("sqlite on Helm without a volume", "helm", {"deploy.helm.persistence": False}, "deploy.helm.persistence is false"),
    (
        "sqlite on Helm, rolling update",
        "helm",
        {"deploy.helm.strategy": "RollingUpdate"},
        "deploy.helm.strategy is RollingUpdate",
    ),
    (
        "auth database = tracking database",
        "systemd",
        {**EXTERNAL_PG, "server.auth.enabled": True, "deploy.auth_database": "mlflow", "server.workers": 1},
        "deploy.auth_database = 'mlflow' is the tracking database",
    ),
    (
        # SQLAlchemy's 5 + 10 per pool, 4 workers x 2 replicas: past max_connections 100 - 10
        "connection budget",
        "helm",
        {**EXTERNAL_PG, **EXTERNAL_S3, "server.workers": 4, "deploy.replicas": 2, "server.env": DEFAULT_POOLS},
        "deploy.replicas x server.workers x pools (tracking, model registry) x (pool_size + max_overflow) = "
        "2 x 4 x 2 x (5 + 10) = 240 connections > 90",
    ),
    (
        "public host not allowed",
        "compose",
        {"deploy.public_host": "mlflow.example.com"},
        "server.allowed_hosts does not cover deploy.public_host 'mlflow.example.com'",
    ),
    ("embedded S3", "compose", {"artifacts.store": "s3"}, "artifacts.s3.provider is 'embedded'"),
    (
        "jobs on two identical replicas",
        "compose",
        {**EXTERNAL_PG, "deploy.replicas": 2, "server.workers": 1},
        "deploy.replicas = 2 with server.job_execution on",
    ),
    (
        "split artifacts",
        "systemd",
        {**EXTERNAL_S3, "artifacts.mode": "split"},
        "artifacts.mode 'split' is not exported",
    ),
    ("our PostgreSQL on Helm", "helm", {"backend": "postgres"}, "postgres.provider runs PostgreSQL on this machine"),
    (
        "loopback database in a container",
        "compose",
        {**EXTERNAL_PG, "postgres.uri": "postgresql://u@127.0.0.1:5432/mlflow"},
        "postgres.uri names host 127.0.0.1, which inside a container is a container itself",
    ),
    (
        "gc cannot reach the server",
        "systemd",
        {"deploy.gc.enabled": True, "server.allowed_hosts": ["mlflow.example.com"]},
        "server.allowed_hosts does not cover '127.0.0.1:",
    ),
    (
        "local artifacts on two Helm pods",
        "helm",
        {**EXTERNAL_PG, "deploy.replicas": 2},
        "deploy.replicas = 2 with local artifacts or a SQLite auth database on Helm",
    ),
]


@pytest.mark.parametrize(("case", "fmt", "overrides", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_guardrail_refuses_in_one_line_naming_the_setting(case, fmt, overrides, message, tmp_path):
    settings = make_settings(tmp_path / "state", **overrides)
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as refused:
        export(settings, fmt, profile="test", out=out, write_secrets=True)
    text = str(refused.value)
    assert "\n" not in text and text.startswith(f"cannot export {fmt}: ")
    assert message in text
    assert not out.exists()


def test_the_issue_example_is_refused_with_sqlalchemy_defaults(tmp_path):
    # 4 workers x 2 replicas x (5 + 10) = 120 > 100 even counting one pool per worker.
    settings = make_settings(
        tmp_path,
        **{**EXTERNAL_PG, **EXTERNAL_S3, "server.workers": 4, "deploy.replicas": 2, "server.env": DEFAULT_POOLS},
    )
    with pytest.raises(ConfigError, match="connections > 90"):
        render(settings, "compose", "test")


def test_a_wildcard_in_allowed_hosts_covers_the_public_host(tmp_path):
    settings = make_settings(
        tmp_path,
        **{"deploy.public_host": "mlflow.example.com", "server.allowed_hosts": ["*.example.com", "127.0.0.1:3111"]},
    )
    assert "docker-compose.yaml" in render(settings, "compose", "test")


def test_host_rule_is_mlflows():
    assert host_allowed(["*"], "anything")
    assert host_allowed(["*.example.com"], "mlflow.example.com")
    assert not host_allowed(["mlflow.example.com"], "mlflow.example.com:443")  # the port is part of it
    assert not host_allowed(["localhost:5000"], "localhost")


def test_prod_and_ci_profiles_pass_every_guardrail():
    for profile in ("ci", "prod"):
        for fmt in ("compose", "helm", "systemd"):
            assert render(profile_settings(profile, state_dir="/var/lib/mlflow-ops"), fmt, profile)
