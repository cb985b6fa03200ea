"""The processes a deployment runs: what `inv server.start` runs, with only documented substitutions.

server_command(settings) and server_own_env(settings) (tasks.libs.server.command) say what
`server.start` runs. A deployment runs exactly that, except for these substitutions, which a
Placement names and tests/unit/test_deploy_process.py checks argument for argument:

  executable   [python, -m, mlflow] -> the target's: systemd keeps a Python (deploy.systemd.python,
               else the one running inv); containers run the image's `mlflow`
  --host/--port  containers listen on 0.0.0.0:5000 (Compose publishes server.host:server.port)
  paths        the state dir -> the target's (systemd: the same; containers: /mlflow/data, the SQLite
               file /mlflow/data/mlflow.db, the Prometheus folder /tmp/prometheus)
  database     Compose with a PostgreSQL of its own: host and port -> the `postgres` service
  MLFLOW_AUTH_CONFIG_PATH  -> where the target puts the basic_auth.ini it writes
  TLS files    server.tls's certificate, key and CA -> where the target keeps them (Compose: its
               secrets under /run/secrets; systemd: <deploy.systemd.config_dir>/tls/ for the tool's
               own, your files where config names them)
  secrets      the values of SECRET_VARS -> a SecretRef (Compose `${VAR:?}`, Helm secretKeyRef,
               systemd EnvironmentFile); the files never hold one

The settings are evaluated in a throwaway state dir with placeholder secrets, so exporting needs
no real secret and never writes into the user's state dir. The caller's own environment
(os.environ) is not part of a deployment.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import tls_files
from tasks.libs.server.command import metrics_dir, server_command, server_own_env

# Process variable -> the secret it carries. Every format names these by reference only.
SECRET_VARS = {
    "PGPASSWORD": "postgres_password",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "admin_password",
    "MLFLOW_TRACKING_PASSWORD": "admin_password",  # mlflow gc signs in as the admin
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask_secret_key",
    "AWS_ACCESS_KEY_ID": "s3_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "s3_secret_access_key",
}
SECRET_WHAT = {
    "postgres_password": "the PostgreSQL password of the store's user",
    "admin_password": "the password of MLflow's basic-auth admin",
    "flask_secret_key": "the Flask session key of the basic-auth app (the same on every replica)",
    "s3_access_key_id": "the S3 access key id",
    "s3_secret_access_key": "the S3 secret access key",
}
_MARK = "mlflow-ops-placeholder-"


@dataclass(frozen=True)
class SecretRef:
    """A value that lives outside the written files: the process variable and the secret it carries."""

    var: str

    @property
    def secret(self) -> str:
        return SECRET_VARS[self.var]


Env = dict[str, "str | SecretRef"]


@dataclass(frozen=True)
class Placement:
    """Where a process runs: the documented substitutions (module docstring)."""

    executable: tuple[str, ...]
    state_dir: str
    auth_config: str
    host: str | None = None
    port: int | None = None
    sqlite_file: str | None = None
    metrics_dir: str | None = None
    database_address: tuple[str, int] | None = None
    tls: tuple[str, str, str] | None = None  # where the certificate, key and CA are (None: where config says)


CONTAINER_DATA = "/mlflow/data"
CONTAINER_PORT = 5000
CONTAINER_AUTH_INI = "/etc/mlflow/basic_auth.ini"
CONTAINER_TLS = ("/run/secrets/tls-cert", "/run/secrets/tls-key", "/run/secrets/tls-ca")  # Compose's secrets


def container_placement(*, bundled_database: bool) -> Placement:
    return Placement(
        executable=("mlflow",),
        state_dir=CONTAINER_DATA,
        auth_config=CONTAINER_AUTH_INI,
        host="0.0.0.0",
        port=CONTAINER_PORT,
        sqlite_file=f"{CONTAINER_DATA}/mlflow.db",
        metrics_dir="/tmp/prometheus",  # per container, and writable under a read-only root
        database_address=("postgres", 5432) if bundled_database else None,
        tls=CONTAINER_TLS,
    )


def systemd_placement(settings: Settings) -> Placement:
    cfg = settings.deploy.systemd
    own = settings.server.tls.cert_file is None  # the tool's CA: installed beside the unit's other files
    return Placement(
        executable=(cfg.python or sys.executable, "-m", "mlflow"),
        state_dir=str(settings.state_path),
        auth_config=f"{cfg.config_dir}/basic_auth.ini",
        tls=(f"{cfg.config_dir}/tls/server.crt", f"{cfg.config_dir}/tls/server.key", f"{cfg.config_dir}/tls/ca.crt")
        if own
        else None,
    )


def placed_ca(settings: Settings, placement: Placement) -> str | None:
    """Where a client on the target finds the CA that verifies the server (None: the system's store)."""
    tls = settings.server.tls
    if not tls.enabled or (tls.cert_file is not None and tls.ca_file is None):
        return None
    return placement.tls[2] if placement.tls else tls.ca_file


@dataclass(frozen=True)
class Process:
    argv: tuple[str, ...]
    env: Env

    def secrets(self) -> list[str]:
        """The secrets this process needs, in a stable order."""
        return sorted({v.secret for v in self.env.values() if isinstance(v, SecretRef)})


def server_process(settings: Settings, placement: Placement) -> Process:
    """`mlflow server` as server.start runs it, placed (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="mlflow-ops-deploy-") as tmp:
        probe = _probe(settings, Path(tmp))
        argv = server_command(probe)
        env = server_own_env(probe)
        leaks = _placeholders(probe)
    if argv[:3] != [sys.executable, "-m", "mlflow"]:
        raise RuntimeError(f"server_command no longer starts with python -m mlflow: {argv[:3]}")
    args = [_tls_paths(_path(a, probe, placement), probe, placement) for a in argv[3:]]
    for flag, value in (("--host", placement.host), ("--port", placement.port)):
        if value is not None:
            args[args.index(flag) + 1] = str(value)
    placed: Env = {}
    for key, val in env.items():
        if key in SECRET_VARS:
            placed[key] = SecretRef(key)
        elif key == "MLFLOW_AUTH_CONFIG_PATH":
            placed[key] = placement.auth_config
        elif key == "MLFLOW_BACKEND_STORE_URI":
            placed[key] = _database(_path(val, probe, placement), placement)
        else:
            placed[key] = _path(val, probe, placement)
    _refuse_leaks([*args, *placed.values()], leaks)
    return Process((*placement.executable, *args), placed)


def store_uri(settings: Settings, placement: Placement) -> str:
    """The placed backend store URI, without a password."""
    value = server_process(settings, placement).env["MLFLOW_BACKEND_STORE_URI"]
    assert isinstance(value, str)
    return value


def gc_process(settings: Settings, placement: Placement, *, tracking_uri: str | None) -> Process:
    """`mlflow gc` over the same store. tracking_uri: the server, for artifacts it serves
    (mlflow-artifacts:/ URIs); None when runs name the bucket itself (artifacts.mode direct)."""
    server = server_process(settings, placement)
    store = server.env["MLFLOW_BACKEND_STORE_URI"]
    assert isinstance(store, str)
    # mlflow gc has no environment variable for its store: --backend-store-uri, without a password.
    argv = (*placement.executable, "gc", "--older-than", settings.deploy.gc.older_than, "--backend-store-uri", store)
    if settings.server.workspaces:  # without it mlflow gc sees 'default' only (and refuses a store with others)
        argv += ("--all-workspaces",)
    env: Env = {k: v for k, v in server.env.items() if k == "PGPASSWORD" or k.startswith(("AWS_", "MLFLOW_S3_"))}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        ca = placed_ca(settings, placement) if tracking_uri.startswith("https:") else None
        if ca:
            env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = ca
        if settings.server.auth.enabled:
            env["MLFLOW_TRACKING_USERNAME"] = settings.server.auth.admin_user
            env["MLFLOW_TRACKING_PASSWORD"] = SecretRef("MLFLOW_TRACKING_PASSWORD")
    return Process(argv, env)


def placed_database_uri(settings: Settings, placement: Placement, database: str) -> str:
    """The store's PostgreSQL server with another database (the basic-auth one), no password."""
    url = make_url(store_uri(settings, placement))
    return url.set(database=database).render_as_string(hide_password=False)


# --- helpers ------------------------------------------------------------------------------


def _probe(settings: Settings, tmp: Path) -> Settings:
    """The settings in a throwaway state dir, every secret a recognisable placeholder."""
    probe = settings.model_copy(deep=True)
    probe.state_dir = str(tmp)
    pg = probe.postgres
    if pg.provider == "external" and pg.uri is not None:
        url = make_url(pg.uri.get_secret_value()).set(password=_MARK + "postgres")
        pg.uri = SecretStr(url.render_as_string(hide_password=False))
    pg.password = SecretStr(_MARK + "postgres")
    probe.server.auth.admin_password = SecretStr(_MARK + "admin")
    probe.artifacts.s3.access_key_id = SecretStr(_MARK + "s3-id")
    probe.artifacts.s3.secret_access_key = SecretStr(_MARK + "s3-secret")
    return probe


def _placeholders(probe: Settings) -> list[str]:
    """Every secret value the probe can produce: the placeholders and what it generated."""
    found = [_MARK]
    secrets_dir = probe.state_path / "secrets"
    if secrets_dir.is_dir():
        found += [p.read_text().strip() for p in secrets_dir.iterdir() if p.name != "basic_auth.ini"]
    return [s for s in found if s]


def _refuse_leaks(values: list, leaks: list[str]) -> None:
    for value in values:
        if isinstance(value, str) and any(secret in value for secret in leaks):
            # A new secret in server_own_env that SECRET_VARS does not name: our bug, never written.
            raise RuntimeError("a secret would be written into a deployment file; name its variable in SECRET_VARS")


def _path(value: str, probe: Settings, placement: Placement) -> str:
    if placement.sqlite_file:
        value = value.replace(str(probe.sqlite_file), placement.sqlite_file)
    if placement.metrics_dir:
        value = value.replace(str(metrics_dir(probe)), placement.metrics_dir)
    return value.replace(str(probe.state_path), placement.state_dir)


def _tls_paths(value: str, probe: Settings, placement: Placement) -> str:
    """The TLS files' paths (in --uvicorn-opts) as the target keeps them."""
    if placement.tls is None or not probe.server.tls.enabled:
        return value
    files = tls_files(probe)
    here = [str(files.cert), str(files.key), str(files.ca) if files.ca else None]
    for path, there in zip(here, placement.tls):
        if path:
            value = value.replace(_path(path, probe, placement), there)
    return value


def _database(uri: str, placement: Placement) -> str:
    if placement.database_address is None or not uri.startswith("postgresql"):
        return uri
    host, port = placement.database_address
    return make_url(uri).set(host=host, port=port).render_as_string(hide_password=False)
