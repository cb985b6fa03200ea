"""The `mlflow server` command line and environment: ours (tuned) and stock MLflow's.

Tuned is what `inv server.start` runs. Stock is what a user who types `pip install
mlflow==<pin> psycopg2-binary` gets: the `mlflow` of a venv that holds nothing else (built once
under <venvs_dir>/stock-mlflow-<pin>, see stock_venv), started as MLflow's docs show it,
`mlflow server --host H --port P`, with every default of MLflow's (4 uvicorn workers, job
execution on with its default engine, artifacts in ./mlartifacts of its folder). Either way the store URI travels in MLFLOW_BACKEND_STORE_URI (the env twin of
--backend-store-uri) without its password, which libpq reads from PGPASSWORD: no secret
ever stands in argv, where any user could read it. With server.tls.enabled uvicorn serves
HTTPS (`--ssl-certfile`/`--ssl-keyfile` in --uvicorn-opts: the files' paths, never a key),
stock and tuned alike, so that the bench compares servers, not TLS against none.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from tasks.libs.artifacts.location import s3_env, server_artifact_args
from tasks.libs.core.credentials import store_uri_and_password_env
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import uvicorn_tls_opts
from tasks.libs.core.venvs import ensure_venv, venvs_dir
from tasks.libs.server.auth import auth_server_env

# What the stock venv holds: MLflow at the release this project pins, and the PostgreSQL driver.
STOCK_DRIVER = "psycopg2-binary"


def stock_requirements() -> list[str]:
    return [f"mlflow=={mlflow_pin()}", STOCK_DRIVER]


def mlflow_pin() -> str:
    """The MLflow release the tool runs (pyproject pins it): the one the stock venv installs too."""
    return metadata.version("mlflow")


def stock_venv(settings: Settings) -> Path:
    """<venvs_dir>/stock-mlflow-<pin>: the plain install the bench measures ours against."""
    return venvs_dir(settings) / f"stock-mlflow-{mlflow_pin()}"


def ensure_stock_venv(settings: Settings, *, say: Callable[[str], None] = print) -> str:
    """The stock venv's python, made once with `python -m venv` + `pip install mlflow==<pin> psycopg2-binary`."""
    venv = stock_venv(settings)
    return ensure_venv(
        venv,
        stock_requirements(),
        log=venv.parent / f"{venv.name}.log",
        what=f"stock MLflow {mlflow_pin()}",
        say=say,
        compile_bytecode=True,  # what a plain `pip install` does
    )


def stock_command(settings: Settings) -> list[str]:
    """`mlflow server --host H --port P`, as MLflow's docs start it, from the stock venv."""
    mlflow = stock_venv(settings) / "bin" / "mlflow"
    if not mlflow.is_file():
        raise UserError(f"the stock MLflow venv {mlflow.parents[1]} is missing; `inv bench` builds it")
    cfg = settings.server
    cmd = [str(mlflow), "server", "--host", cfg.host, "--port", str(cfg.port)]
    if cfg.tls.enabled:  # HTTPS as ours serves it, so the bench compares servers, not TLS against none
        cmd += ["--uvicorn-opts", uvicorn_opts(settings, "")]
    return cmd


def server_command(settings: Settings, *, stock: bool = False, metrics_path: Path | None = None) -> list[str]:
    """metrics_path: the multiprocess folder when server.metrics is on (default: metrics_dir)."""
    if stock:
        return stock_command(settings)
    cfg = settings.server
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", cfg.host, "--port", str(cfg.port)]
    cmd += ["--workers", str(cfg.workers), *server_artifact_args(settings), "--allowed-hosts", allowed_hosts(settings)]
    if cfg.metrics:
        cmd += ["--expose-prometheus", str(metrics_path or metrics_dir(settings))]
    opts = uvicorn_opts(settings, cfg.uvicorn_opts)
    if opts:
        cmd += ["--uvicorn-opts", opts]
    if cfg.auth.enabled:
        cmd += ["--app-name", "basic-auth"]
    if cfg.workspaces:
        cmd += ["--enable-workspaces"]
    return cmd


def uvicorn_opts(settings: Settings, opts: str) -> str:
    """opts plus, with server.tls.enabled, the certificate and key paths (MLflow shlex-splits it)."""
    if not settings.server.tls.enabled:
        return opts
    return " ".join(filter(None, [opts, shlex.join(uvicorn_tls_opts(settings))]))


def server_env(settings: Settings, *, stock: bool = False) -> dict[str, str]:
    """The server's environment: ours, plus what the settings add; the store URI travels here."""
    if stock:  # nothing of ours: no MLFLOW_* variable of the caller's, nor our venv, reaches a stock server
        store_uri, password_env = store_uri_and_password_env(settings)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MLFLOW_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        }
        return {**env, "MLFLOW_BACKEND_STORE_URI": store_uri, **password_env}
    own = server_own_env(settings)
    env = {k: v for k, v in os.environ.items() if k != JOB_ENGINE_ENV}  # the engine is the settings' choice
    return {**env, **own}


def server_own_env(settings: Settings) -> dict[str, str]:
    """What the settings add to the caller's environment: the part a deployment writes down.

    It has side effects in the state dir (the auth ini file, generated secrets), as starting does.
    """
    store_uri, password_env = store_uri_and_password_env(settings)
    env = dict(settings.server.env)
    env.update(password_env)
    env["MLFLOW_BACKEND_STORE_URI"] = store_uri
    env.update(job_env(settings))
    env.update(s3_env(settings))
    if settings.server.auth.enabled:
        env.update(auth_server_env(settings))
    return env


JOB_ENGINE_ENV = "MLFLOW_SERVER_JOB_EXECUTION_ENGINE"


def job_env(settings: Settings) -> dict[str, str]:
    """Job execution on or off, and the engine: MLflow's own variables (unset engine = huey)."""
    cfg = settings.server
    if not cfg.job_execution:
        return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}
    if cfg.job_engine == "executor":
        env[JOB_ENGINE_ENV] = "executor"
    return env


def metrics_dir(settings: Settings) -> Path:
    """prometheus_client's multiprocess folder: every worker writes its counters here."""
    return settings.state_path / "server" / "prometheus"


def allowed_hosts(settings: Settings) -> str:
    """--allowed-hosts: config's list, else the names the bind address answers to (with port)."""
    cfg = settings.server
    if cfg.allowed_hosts:
        return ",".join(cfg.allowed_hosts)
    names = ["localhost", "127.0.0.1"]
    if cfg.host not in ("127.0.0.1", "localhost", "0.0.0.0", "::"):
        names.append(cfg.host)
    return ",".join(n for name in names for n in (name, f"{name}:{cfg.port}"))


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
