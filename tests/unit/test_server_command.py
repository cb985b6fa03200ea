"""The server's command line and environment for each artifact store and mode, and metrics."""

from __future__ import annotations

import pytest

from tasks.libs.artifacts.location import artifacts_server_command, s3_env
from tasks.libs.core.errors import ConfigError, UserError
from tasks.libs.server.command import mlflow_pin, server_command, server_env, stock_requirements, stock_venv
from tests.support.settings import make_settings


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_local_artifacts_are_served_from_the_state_dir(tmp_path):
    settings = make_settings(tmp_path)
    cmd = server_command(settings)
    assert flag(cmd, "--artifacts-destination") == str(tmp_path / "artifacts")
    assert "--expose-prometheus" not in cmd and s3_env(settings) == {}


def test_s3_proxied_direct_and_split(tmp_path):
    base = {"artifacts.store": "s3", "artifacts.s3.bucket": "bkt", "artifacts.s3.prefix": "/runs/"}
    proxied = server_command(make_settings(tmp_path, **base))
    assert "--serve-artifacts" in proxied and flag(proxied, "--artifacts-destination") == "s3://bkt/runs"
    direct = server_command(make_settings(tmp_path, **base, **{"artifacts.mode": "direct"}))
    assert "--no-serve-artifacts" in direct and flag(direct, "--default-artifact-root") == "s3://bkt/runs"
    split_settings = make_settings(
        tmp_path, **base, **{"artifacts.mode": "split", "artifacts.artifacts_server.port": 4000}
    )
    split = server_command(split_settings)
    assert (
        flag(split, "--default-artifact-root") == "http://127.0.0.1:4000/api/2.0/mlflow-artifacts/artifacts/experiments"
    )
    artifacts_only = artifacts_server_command(split_settings)
    assert "--artifacts-only" in artifacts_only and flag(artifacts_only, "--port") == "4000"


def test_s3_credentials_travel_in_the_environment_never_argv(tmp_path):
    settings = make_settings(
        tmp_path,
        **{
            "artifacts.store": "s3",
            "artifacts.s3.provider": "external",
            "artifacts.s3.endpoint_url": "https://s3.example:9000",
            "artifacts.s3.access_key_id": "AKIDEXAMPLE",
            "artifacts.s3.secret_access_key": "s3cr3t-key",
        },
    )
    env = server_env(settings)
    assert (env["MLFLOW_S3_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        "https://s3.example:9000",
        "AKIDEXAMPLE",
        "s3cr3t-key",
    )
    assert not any("s3cr3t" in arg for arg in server_command(settings))


def test_embedded_s3_gets_generated_private_credentials(tmp_path):
    settings = make_settings(tmp_path, **{"artifacts.store": "s3"})
    env = s3_env(settings)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:3115"
    assert (tmp_path / "secrets" / "s3_secret_access_key").stat().st_mode & 0o077 == 0
    assert env == s3_env(settings)  # generated once, the same afterwards


def test_metrics_flag_points_at_the_multiprocess_folder(tmp_path):
    cmd = server_command(make_settings(tmp_path, **{"server.metrics": True}))
    assert flag(cmd, "--expose-prometheus") == str(tmp_path / "server" / "prometheus")


def test_local_artifacts_only_proxied(tmp_path):
    with pytest.raises(ConfigError, match="artifacts.mode 'direct' needs artifacts.store s3"):
        make_settings(tmp_path, **{"artifacts.mode": "direct"})


def test_stock_is_the_docs_command_from_a_plain_venv(tmp_path, monkeypatch):
    """MLflow's docs (and `mlflow server --help`) start a server as `mlflow server --host H --port P`,
    the store given by --backend-store-uri or its env twin MLFLOW_BACKEND_STORE_URI; nothing else."""
    venvs = tmp_path / "venvs"
    settings = make_settings(tmp_path, **{"lifecycle.venvs_dir": str(venvs), "server.port": 4321})
    with pytest.raises(UserError, match="stock MLflow venv .* is missing; `inv bench` builds it"):
        server_command(settings, stock=True)
    mlflow = stock_venv(settings) / "bin" / "mlflow"
    assert stock_venv(settings) == venvs / f"stock-mlflow-{mlflow_pin()}"
    mlflow.parent.mkdir(parents=True)
    mlflow.touch()
    assert server_command(settings, stock=True) == [str(mlflow), "server", "--host", "127.0.0.1", "--port", "4321"]
    assert stock_requirements() == [f"mlflow=={mlflow_pin()}", "psycopg2-binary"]
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # a caller's MLflow setting never leaks in
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere/.venv")
    env = server_env(settings, stock=True)
    assert [k for k in env if k.startswith("MLFLOW_")] == ["MLFLOW_BACKEND_STORE_URI"]
    assert "VIRTUAL_ENV" not in env


def test_job_execution_is_on_with_the_executor_engine_unless_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SERVER_JOB_EXECUTION_ENGINE", "executor")  # the settings decide, not the caller
    on = server_env(make_settings(tmp_path))
    assert on["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true" and on["MLFLOW_SERVER_JOB_EXECUTION_ENGINE"] == "executor"
    huey = server_env(make_settings(tmp_path, **{"server.job_engine": "huey"}))
    assert huey["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true" and "MLFLOW_SERVER_JOB_EXECUTION_ENGINE" not in huey
    off = server_env(make_settings(tmp_path, **{"server.job_execution": False}))
    assert off["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and "MLFLOW_SERVER_JOB_EXECUTION_ENGINE" not in off


def test_workspaces_flag_follows_the_setting(tmp_path):
    assert "--enable-workspaces" not in server_command(make_settings(tmp_path))
    stock = make_settings(tmp_path, **{"server.workspaces": True, "lifecycle.venvs_dir": str(tmp_path / "venvs")})
    (stock_venv(stock) / "bin").mkdir(parents=True)
    (stock_venv(stock) / "bin" / "mlflow").touch()
    assert "--enable-workspaces" not in server_command(stock, stock=True)
    assert server_command(make_settings(tmp_path, **{"server.workspaces": True}))[-1] == "--enable-workspaces"


def test_tls_puts_the_certificate_paths_in_uvicorn_opts_for_every_server_it_starts(tmp_path):
    tls_on = {"server.tls.enabled": True, "artifacts.store": "s3", "artifacts.mode": "split"}
    settings = make_settings(tmp_path, **tls_on, **{"artifacts.artifacts_server.port": 4000})
    files = f"--ssl-certfile {tmp_path}/secrets/tls/server.crt --ssl-keyfile {tmp_path}/secrets/tls/server.key"
    assert flag(server_command(settings), "--uvicorn-opts") == f"--no-access-log {files}"
    stock_mlflow = stock_venv(settings) / "bin" / "mlflow"
    stock_mlflow.parent.mkdir(parents=True)
    stock_mlflow.touch()
    assert flag(server_command(settings, stock=True), "--uvicorn-opts") == files
    # split mode: the artifacts-only server on server.host serves the same certificate, at an https URL
    assert flag(artifacts_server_command(settings), "--uvicorn-opts") == f"--no-access-log {files}"
    assert str(flag(server_command(settings), "--default-artifact-root")).startswith("https://127.0.0.1:4000/")
    no_log = make_settings(tmp_path, **{"server.tls.enabled": True, "server.uvicorn_opts": ""})
    assert flag(server_command(no_log), "--uvicorn-opts") == files
    assert "--ssl-keyfile" not in " ".join(server_command(make_settings(tmp_path)))
