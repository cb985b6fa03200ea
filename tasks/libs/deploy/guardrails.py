"""Refusals before anything is written: each is one line that names the setting to change."""

from __future__ import annotations

import fnmatch
from urllib.parse import urlsplit

from tasks.libs.core.errors import ConfigError
from tasks.libs.core.settings import Settings
from tasks.libs.deploy import facts
from tasks.libs.deploy.facts import Database
from tasks.libs.server.command import allowed_hosts, is_loopback


def host_allowed(patterns: list[str], host: str) -> bool:
    """MLflow 3.17's rule (mlflow/server/security_utils.py, is_allowed_host_header): "*" allows
    every host, a pattern with "*" is matched with fnmatch, anything else must equal the Host
    header, which carries the port unless it is the scheme's default."""
    if "*" in patterns:
        return True
    return any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in patterns)


def problems(settings: Settings, fmt: str) -> list[str]:
    """Every reason to refuse exporting settings as fmt, most fundamental first."""
    out: list[str] = []
    deploy = settings.deploy
    db = facts.database(settings)
    out += _artifacts(settings)
    out += _database_reachable(db, fmt)
    if settings.backend == "sqlite" and deploy.replicas > 1:
        out.append(
            f"deploy.replicas = {deploy.replicas} with backend sqlite: one SQLite file cannot be shared "
            "across pods or hosts; set deploy.replicas: 1 or use backend postgres"
        )
    if fmt == "helm":
        out += _helm_volume(settings)
        if settings.server.tls.enabled and not deploy.public_host:
            out.append(
                "server.tls on Helm is the ingress's TLS for deploy.public_host, which is null; set "
                "deploy.public_host to the name clients use (or server.tls.enabled: false)"
            )
    out += _auth_database(settings, db)
    if db is not None:
        out += _connection_budget(settings)
    out += _hosts(settings, fmt)
    return out


def check(settings: Settings, fmt: str) -> None:
    """Raise ConfigError with the first problem, if any."""
    found = problems(settings, fmt)
    if found:
        raise ConfigError(f"cannot export {fmt}: {found[0]}")


def _artifacts(settings: Settings) -> list[str]:
    art = settings.artifacts
    if art.store != "s3":
        return []
    if art.s3.provider == "embedded":
        return [
            "artifacts.s3.provider is 'embedded', an in-memory S3 stand-in (a restart loses every object) "
            "for trying things here; set artifacts.s3.provider: external and name your bucket"
        ]
    if art.mode == "split":
        return [
            "artifacts.mode 'split' is not exported: clients get the artifacts-only server's bind address; "
            "use artifacts.mode proxied (the server streams artifacts) or direct"
        ]
    return []


def _database_reachable(db: Database | None, fmt: str) -> list[str]:
    if db is None or fmt == "systemd":
        return []
    if fmt == "helm" and db.ours:
        return [
            "postgres.provider runs PostgreSQL on this machine, which pods cannot reach, and the chart's own "
            "PostgreSQL (bitnamilegacy images) is unmaintained; set postgres.provider: external and postgres.uri"
        ]
    if not db.ours and (is_loopback(db.host) or db.host in ("0.0.0.0", "::")):
        where = "a pod" if fmt == "helm" else "a container"
        return [
            f"postgres.uri names host {db.host}, which inside {where} is {where} itself; "
            "give the database's network name in postgres.uri"
        ]
    return []


def _helm_volume(settings: Settings) -> list[str]:
    out = []
    helm = settings.deploy.helm
    why = "backend sqlite" if settings.backend == "sqlite" else "local artifacts or a SQLite auth database"
    if facts.needs_volume(settings) and helm.persistence is False:
        out.append(
            f"deploy.helm.persistence is false with {why}: the files would live in the pod and vanish "
            "on restart; set deploy.helm.persistence: true (or null)"
        )
    if settings.backend == "sqlite" and helm.strategy == "RollingUpdate":
        out.append(
            "deploy.helm.strategy is RollingUpdate with backend sqlite: old and new pod would open the same "
            "SQLite file during a rollout; set deploy.helm.strategy: Recreate (or null)"
        )
    if facts.needs_volume(settings) and settings.deploy.replicas > 1:
        out.append(
            f"deploy.replicas = {settings.deploy.replicas} with {why} on Helm: a ReadWriteOnce volume "
            "serves one pod; set artifacts.store: s3 (and auth on PostgreSQL) or deploy.replicas: 1"
        )
    return out


def _auth_database(settings: Settings, db: Database | None) -> list[str]:
    if not settings.server.auth.enabled:
        return []
    if db is not None and settings.deploy.auth_database == db.name:
        return [
            f"deploy.auth_database = {db.name!r} is the tracking database: MLflow's auth tables and "
            "tracking tables collide on upgrade; name another database (e.g. mlflow_auth)"
        ]
    if db is None and settings.sqlite_file == settings.state_path / "auth" / "basic_auth.db":
        return [
            "sqlite.path is the basic-auth database <state_dir>/auth/basic_auth.db: MLflow's auth tables "
            "and tracking tables would collide; give sqlite.path another file"
        ]
    return []


def _connection_budget(settings: Settings) -> list[str]:
    deploy = settings.deploy
    workers = settings.server.workers
    engines = facts.engines_per_worker(settings)
    pool, overflow = facts.pool_per_engine(settings)
    need = deploy.replicas * workers * engines * (pool + overflow)
    limit = facts.max_connections(settings)
    budget = limit - deploy.connection_reserve
    if need <= budget:
        return []
    pools = "tracking, model registry" + (", auth" if engines == 3 else "")
    return [
        f"deploy.replicas x server.workers x pools ({pools}) x (pool_size + max_overflow) = "
        f"{deploy.replicas} x {workers} x {engines} x ({pool} + {overflow}) = {need} connections > {budget} "
        f"(max_connections {limit} - deploy.connection_reserve {deploy.connection_reserve}); lower "
        "server.workers, deploy.replicas or MLFLOW_SQLALCHEMYSTORE_POOL_SIZE/_MAX_OVERFLOW in server.env, "
        "or set deploy.max_connections to the server's real limit"
    ]


def _hosts(settings: Settings, fmt: str) -> list[str]:
    patterns = allowed_hosts(settings).split(",")
    public = settings.deploy.public_host
    if public and not host_allowed(patterns, public):
        return [
            f"server.allowed_hosts does not cover deploy.public_host {public!r}: MLflow answers 403 to that "
            f"Host header behind a proxy or ingress; add {public!r} to server.allowed_hosts"
        ]
    gc = settings.deploy.gc
    local = urlsplit(settings.server.url).netloc
    if fmt == "systemd" and gc.enabled and facts.gc_needs_server(settings) and not host_allowed(patterns, local):
        return [
            f"server.allowed_hosts does not cover {local!r}, where mlflow gc on the server's host reaches it; "
            f"add {local!r} to server.allowed_hosts or set deploy.gc.enabled: false"
        ]
    return []
