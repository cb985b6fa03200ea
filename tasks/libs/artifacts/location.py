"""Where artifacts live, and how `mlflow server` and its clients are told: arguments and environment.

local   <state_dir>/artifacts, served by the server (--artifacts-destination DIR).
s3      s3://<bucket>/<prefix>, in one of three modes:
        proxied  the server reads and writes the bucket; clients only talk HTTP to it
        direct   clients read and write the bucket themselves (they need s3_env too); the
                 server still needs it for the UI's artifact views
        split    a separate `--artifacts-only` server proxies the bucket; the tracking server
                 hands clients that server's URL
The S3 endpoint and credentials travel in the environment (MLFLOW_S3_ENDPOINT_URL, AWS_*),
never in argv.
"""

from __future__ import annotations

import shlex
import sys
from urllib.parse import urlsplit

from tasks.libs.core.credentials import generated_secret
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import uvicorn_tls_opts

ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts/experiments"


def artifact_root(settings: Settings) -> str:
    """The store's root: a local folder, or s3://bucket/prefix."""
    if settings.artifacts.store == "local":
        return str(settings.artifacts_dir)
    s3 = settings.artifacts.s3
    return f"s3://{s3.bucket}/{s3.prefix}" if s3.prefix else f"s3://{s3.bucket}"


def s3_endpoint(settings: Settings) -> str | None:
    """The S3 API's URL: the embedded one we start, the configured one, or None (AWS itself)."""
    s3 = settings.artifacts.s3
    return f"http://{s3.host}:{s3.port}" if s3.provider == "embedded" else s3.endpoint_url


def s3_credentials(settings: Settings) -> tuple[str, str] | None:
    """(access key id, secret key): configured, generated for the embedded store, or None (boto3's chain)."""
    s3 = settings.artifacts.s3
    if s3.access_key_id is not None and s3.secret_access_key is not None:
        return s3.access_key_id.get_secret_value(), s3.secret_access_key.get_secret_value()
    if s3.provider == "embedded":
        return generated_secret(settings, "s3_access_key_id"), generated_secret(settings, "s3_secret_access_key")
    return None


def s3_env(settings: Settings) -> dict[str, str]:
    """What a process that touches the bucket needs in its environment (empty for local artifacts)."""
    if settings.artifacts.store != "s3":
        return {}
    env = {"AWS_DEFAULT_REGION": settings.artifacts.s3.region}
    endpoint = s3_endpoint(settings)
    if endpoint:
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    credentials = s3_credentials(settings)
    if credentials:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = credentials
    return env


def server_artifact_args(settings: Settings) -> list[str]:
    """The tracking server's artifact flags for the configured store and mode."""
    if settings.artifacts.store == "local":
        return ["--artifacts-destination", artifact_root(settings)]
    mode = settings.artifacts.mode
    if mode == "proxied":
        return ["--serve-artifacts", "--artifacts-destination", artifact_root(settings)]
    if mode == "direct":
        return ["--no-serve-artifacts", "--default-artifact-root", artifact_root(settings)]
    return ["--no-serve-artifacts", "--default-artifact-root", artifacts_server_url(settings) + ARTIFACTS_API]


def artifacts_server_url(settings: Settings) -> str:
    """Split mode: where the --artifacts-only server answers (on the tracking server's host, with its TLS)."""
    host = "127.0.0.1" if settings.server.host in ("0.0.0.0", "::") else settings.server.host
    scheme = "https" if settings.server.tls.enabled else "http"
    return f"{scheme}://{host}:{settings.artifacts.artifacts_server.port}"


def artifacts_server_command(settings: Settings) -> list[str]:
    """Split mode: the `--artifacts-only` server that proxies the bucket (S3 settings in its env)."""
    cfg = settings.artifacts.artifacts_server
    names = ("localhost", "127.0.0.1", urlsplit(artifacts_server_url(settings)).hostname or "127.0.0.1")
    allowed = ",".join(dict.fromkeys(n for name in names for n in (name, f"{name}:{cfg.port}")))
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--artifacts-only",
        "--artifacts-destination",
        artifact_root(settings),
        "--host",
        settings.server.host,
        "--port",
        str(cfg.port),
        "--workers",
        str(cfg.workers),
        "--allowed-hosts",
        allowed,
    ]
    opts = shlex.split(settings.server.uvicorn_opts)
    if settings.server.tls.enabled:  # on server.host beside the tracking server: never plain HTTP there
        opts += uvicorn_tls_opts(settings)
    if settings.server.workspaces:  # requests name their workspace; it scopes paths to workspaces/<name>/
        cmd.append("--enable-workspaces")
    return cmd + (["--uvicorn-opts", shlex.join(opts)] if opts else [])


def client_s3_env(settings: Settings) -> dict[str, str]:
    """What a client needs to log artifacts: direct mode hands clients the bucket itself.

    Without MLFLOW_S3_ENDPOINT_URL a direct-mode client would send its uploads to AWS.
    """
    return s3_env(settings) if settings.artifacts.store == "s3" and settings.artifacts.mode == "direct" else {}
