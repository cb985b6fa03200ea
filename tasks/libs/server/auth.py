"""Opt-in authentication: MLflow's basic-auth app with credentials of our own making.

MLflow reads the auth config from an ini file; ours lives in <state_dir>/secrets (0600)
and names an auth database in <state_dir>/auth. The admin password and the Flask secret
key reach the server through its environment, never argv or the ini file.
"""

from __future__ import annotations

import base64
import os

from tasks.libs.core.credentials import generated_secret
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import tls_client_env

INI = """[mlflow]
default_permission = {permission}
database_uri = {database_uri}
admin_username = {user}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = {grant}
"""


def admin_credentials(settings: Settings) -> tuple[str, str]:
    auth = settings.server.auth
    if auth.admin_password is not None:
        return auth.admin_user, auth.admin_password.get_secret_value()
    return auth.admin_user, generated_secret(settings, "admin_password")


def auth_server_env(settings: Settings) -> dict[str, str]:
    """Environment for a server with basic auth; writes the ini file and makes the secrets."""
    auth = settings.server.auth
    secrets_dir = settings.state_path / "secrets"
    auth_dir = settings.state_path / "auth"
    auth_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ini = secrets_dir / "basic_auth.ini"
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            INI.format(
                permission=auth.default_permission,
                database_uri=f"sqlite:///{auth_dir / 'basic_auth.db'}",
                user=auth.admin_user,
                grant=str(auth.grant_default_workspace_access).lower(),
            )
        )
    _, password = admin_credentials(settings)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": generated_secret(settings, "flask_secret_key"),
    }


def client_env(settings: Settings) -> dict[str, str]:
    """What an MLflow client needs to talk to our server: who to sign in as (auth on) and the CA
    to trust (TLS with the tool's CA or server.tls.ca_file); empty for a plain open server."""
    env = tls_client_env(settings)
    if not settings.server.auth.enabled:
        return env
    user, password = admin_credentials(settings)
    return {**env, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def basic_auth_header(settings: Settings) -> dict[str, str]:
    if not settings.server.auth.enabled:
        return {}
    user, password = admin_credentials(settings)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
