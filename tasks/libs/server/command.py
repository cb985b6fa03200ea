"""The `mlflow server` command line and environment: ours (tuned) and stock MLflow's.

Tuned is what `inv server.start` runs. Stock is `mlflow server` as MLflow's docs show it,
run the way a plain `pip install mlflow` runs it: uvicorn on h11 and asyncio's loop
(uvicorn picks httptools and uvloop whenever they are importable, and forcing h11 alone
keeps uvloop, which hides h11's keep-alive stall), job execution left on (MLflow's default).
Either way the store URI travels in MLFLOW_BACKEND_STORE_URI (the env twin of
--backend-store-uri) without its password, which libpq reads from PGPASSWORD: no secret
ever stands in argv, where any user could read it. With server.tls.enabled uvicorn serves
HTTPS (`--ssl-certfile`/`--ssl-keyfile` in --uvicorn-opts: the files' paths, never a key),
stock and tuned alike, so that the bench compares servers, not TLS against none.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from tasks.libs.artifacts.location import s3_env, server_artifact_args
from tasks.libs.core.credentials import store_uri_and_password_env
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import uvicorn_tls_opts
from tasks.libs.server.auth import auth_server_env

STOCK_UVICORN_OPTS = "--http h11 --loop asyncio"


def server_command(settings: Settings, *, stock: bool = False, metrics_path: Path | None = None) -> list[str]:
    """metrics_path: the multiprocess folder when server.metrics is on (default: metrics_dir)."""
    cfg = settings.server
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", cfg.host, "--port", str(cfg.port)]
    if stock:
        return cmd + ["--uvicorn-opts", uvicorn_opts(settings, STOCK_UVICORN_OPTS)]
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
    if stock:  # nothing of ours: no MLFLOW_* variable of the caller's reaches a stock server
        store_uri, password_env = store_uri_and_password_env(settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        return {**env, "MLFLOW_BACKEND_STORE_URI": store_uri, **password_env}
    return {**os.environ, **server_own_env(settings)}


def server_own_env(settings: Settings) -> dict[str, str]:
    """What the settings add to the caller's environment: the part a deployment writes down.

    It has side effects in the state dir (the auth ini file, generated secrets), as starting does.
    """
    store_uri, password_env = store_uri_and_password_env(settings)
    env = dict(settings.server.env)
    env.update(password_env)
    env["MLFLOW_BACKEND_STORE_URI"] = store_uri
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if settings.server.job_execution else "false"
    env.update(s3_env(settings))
    if settings.server.auth.enabled:
        env.update(auth_server_env(settings))
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
