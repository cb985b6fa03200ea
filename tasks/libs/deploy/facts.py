"""Facts about a deployment that the three formats share: the database, the auth database, volumes."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.libs.core.settings import Settings
from tasks.libs.deploy.process import Placement, placed_database_uri
from tasks.libs.postgres.connection import libpq_params
from tasks.libs.server.auth import INI

FORMATS = ("compose", "helm", "systemd")
# The release these files are verified against (pyproject pins it; a unit test keeps them equal).
# A constant rather than the installed version, so the output does not depend on the machine.
MLFLOW_VERSION = "3.17.2"
POSTGRES_DEFAULT_MAX_CONNECTIONS = 100


@dataclass(frozen=True)
class Database:
    """The PostgreSQL server the deployment's store lives on."""

    host: str
    port: int
    name: str
    user: str
    ours: bool  # the tool runs it (provider local/docker/auto); else someone else does (external)


def database(settings: Settings) -> Database | None:
    if settings.backend != "postgres":
        return None
    server = libpq_params(settings, password=False)
    return Database(
        server.get("host", "localhost"),
        int(server.get("port", 5432)),
        server.get("dbname", ""),
        server.get("user", ""),
        ours=settings.postgres.provider != "external",
    )


def max_connections(settings: Settings) -> int:
    """The target PostgreSQL's max_connections (config/defaults.yaml, deploy.max_connections)."""
    if settings.deploy.max_connections is not None:
        return settings.deploy.max_connections
    db = database(settings)
    if db is not None and db.ours:
        return int(settings.postgres.local.parameters.get("max_connections", POSTGRES_DEFAULT_MAX_CONNECTIONS))
    return POSTGRES_DEFAULT_MAX_CONNECTIONS


def auth_on_postgres(settings: Settings) -> bool:
    return settings.server.auth.enabled and settings.backend == "postgres"


def auth_database_uri(settings: Settings, placement: Placement) -> str:
    """The basic-auth database: deploy.auth_database on the store's PostgreSQL server, or the
    SQLite file server.start uses (<state_dir>/auth/basic_auth.db). No password: PGPASSWORD."""
    if auth_on_postgres(settings):
        return placed_database_uri(settings, placement, settings.deploy.auth_database)
    return f"sqlite:///{placement.state_dir}/auth/basic_auth.db"


def auth_ini(settings: Settings, placement: Placement) -> str:
    """MLflow's basic-auth ini (server.auth's template): no secret in it."""
    auth = settings.server.auth
    return INI.format(
        permission=auth.default_permission,
        database_uri=auth_database_uri(settings, placement),
        user=auth.admin_user,
        grant=str(auth.grant_default_workspace_access).lower(),
    )


def needs_volume(settings: Settings) -> bool:
    """Whether the server keeps files of its own: the SQLite store, local artifacts, a SQLite auth db."""
    return (
        settings.backend == "sqlite"
        or settings.artifacts.store == "local"
        or (settings.server.auth.enabled and not auth_on_postgres(settings))
    )


def helm_persistence(settings: Settings) -> bool:
    chosen = settings.deploy.helm.persistence
    return needs_volume(settings) if chosen is None else chosen


def helm_strategy(settings: Settings) -> str:
    chosen = settings.deploy.helm.strategy
    if chosen is not None:
        return chosen
    return "Recreate" if helm_persistence(settings) else "RollingUpdate"


def gc_needs_server(settings: Settings) -> bool:
    """Runs' artifact URIs point at the server (mlflow-artifacts:/) unless clients write the bucket."""
    return not (settings.artifacts.store == "s3" and settings.artifacts.mode == "direct")


def engines_per_worker(settings: Settings) -> int:
    """Connection pools each uvicorn worker opens on the PostgreSQL server: MLflow 3.17 keeps
    one engine for tracking and one for the model registry (separate class-level caches in
    store/tracking and store/model_registry sqlalchemy_store.py), plus the auth store's."""
    return 2 + (1 if auth_on_postgres(settings) else 0)


def pool_per_engine(settings: Settings) -> tuple[int, int]:
    """(pool_size, max_overflow) from server.env; SQLAlchemy's 5 and 10 when unset."""
    env = settings.server.env
    return int(env.get("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", 5)), int(env.get("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", 10))
