"""Helm: values.yaml for the community-charts `mlflow` chart 1.11.5, and a README with the secrets.

The values say in the chart's terms what `server.start` runs: values_document() walks the placed
`mlflow server` command line and environment (tasks.libs.deploy.process) and translates every
flag and variable; one it does not know is our bug and stops the export, so a flag added to
server_command cannot silently go missing here. What the chart cannot express is listed in the
header of values.yaml.

Chart chosen: community-charts/mlflow 1.11.5 (appVersion 3.15.1, image pinned to ours): it has a
values.schema.json, secretKeyRefs for the database, admin and S3 secrets, basic auth on a
PostgreSQL auth database, a migration step and /health probes. The chart in mlflow/mlflow's
`charts/` (0.1.x, OCI only) has no schema and no basic auth, and its migration Job calls
`mlflow db upgrade --uri`, which 3.17 refuses.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from sqlalchemy.engine import make_url

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.deploy import facts, helm_objects
from tasks.libs.deploy.image import dockerfile
from tasks.libs.deploy.process import CONTAINER_DATA, Process, SecretRef, container_placement, server_process
from tasks.libs.deploy.yamlout import dump

CHART = {"repo": "community-charts", "url": "https://community-charts.github.io/helm-charts", "name": "mlflow"}
CHART_VERSION = "1.11.5"
CHART_APP_VERSION = "3.15.1"
LIMITS = (
    "the schema migration is an init container in every pod (backendStore.databaseMigration), not a\n"
    "  pre-upgrade Job: scale to 1 replica while MLflow's version changes, or run `mlflow db upgrade` yourself",
    "no CronJob for `mlflow gc`: gc-cronjob.yaml next to this file is a plain one (kubectl apply); none\n"
    "  for SQLite, whose ReadWriteOnce volume a second pod cannot mount",
    "no startup probe: the liveness probe's initialDelaySeconds + failureThreshold x periodSeconds cover\n"
    "  server.start_timeout",
    "uvicorn options: the chart wraps them in literal quotes while log.enabled is true, which breaks\n"
    "  options with spaces, so log.enabled is false (the chart then sets MLFLOW_CONFIGURE_LOGGING=false)",
    "the chart pastes the database and admin passwords into the auth ini with sed, unquoted: use\n"
    "  passwords of [A-Za-z0-9_-] (mlflow-ops generates those)",
    "the store is reached as postgresql+psycopg2:// with PGHOST/PGPORT/PGDATABASE from a ConfigMap and\n"
    "  PGUSER/PGPASSWORD from the Secret, not as one URI",
    "in-cluster clients (the gc CronJob) send the Service's name as Host: it is added to serverAllowedHosts",
    "the Prometheus folder is /tmp/prometheus (the root file system is read-only), an emptyDir that\n"
    "  outlives a container restart inside its pod; the chart's serviceMonitor needs the Prometheus\n"
    "  operator and stays off",
    "TLS and the ingress are yours: ingress.* (className, hosts: deploy.public_host, tls) per your cluster",
)
WORKSPACES_LIMIT = (
    "server.workspaces: the chart has no value for --enable-workspaces; MLFLOW_ENABLE_WORKSPACES=true in\n"
    "  extraEnvVars does the same (mlflow server reads it when the flag is not given)"
)
TLS_LIMIT = (
    "TLS: the ingress terminates it for deploy.public_host with the Secret named in ingress.tls (README.md);\n"
    "  the pods stay plain HTTP inside the cluster. ingress.className and annotations are your cluster's"
)
DB_SECRET_KEYS = ("username", "password")
# Flags of `mlflow server` that the chart sets itself to what a container needs.
_CHART_DEFAULTS = {"--host": "0.0.0.0", "--port": "5000"}


def base_limits(settings: Settings) -> tuple[str, ...]:
    """LIMITS, the last (TLS is yours) replaced by how the ingress does it when server.tls is on."""
    return LIMITS if not settings.server.tls.enabled else (*LIMITS[:-1], TLS_LIMIT)


def _setting_limits(settings: Settings) -> list[str]:
    found = [WORKSPACES_LIMIT] if settings.server.workspaces else []
    if settings.server.auth.enabled and settings.server.auth.grant_default_workspace_access:
        found.append(
            "server.auth.grant_default_workspace_access: the chart writes its own auth ini without it, so\n"
            "  'default' stays closed to users without a role there"
        )
    return found


def tls_secret_name(settings: Settings) -> str:
    return f"{settings.deploy.name}-tls"


def ingress_values(settings: Settings) -> dict[str, Any]:
    """server.tls on Kubernetes: the chart's ingress with its TLS block for deploy.public_host."""
    host = settings.deploy.public_host
    return {
        "enabled": True,
        "hosts": [{"host": host, "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": tls_secret_name(settings), "hosts": [host]}],
    }


def secret_names(settings: Settings) -> dict[str, str]:
    name = settings.deploy.name
    return {"db": f"{name}-db", "admin": f"{name}-admin", "flask": f"{name}-flask", "s3": f"{name}-s3"}


def helm_files(settings: Settings, profile: str) -> dict[str, str]:
    placement = container_placement(bundled_database=False)
    server = server_process(settings, placement)
    values = values_document(settings, server)
    header = "\n".join(
        [
            f"Values for chart {CHART['repo']}/{CHART['name']} {CHART_VERSION} (appVersion {CHART_APP_VERSION};",
            f"the image is pinned to MLflow {facts.MLFLOW_VERSION}), generated by mlflow-ops from profile {profile!r};",
            "re-run `inv deploy.helm` instead of editing. Secrets are secretKeyRefs: see README.md.",
            "What this chart cannot express, and what was done instead:",
            *[f"- {item}" for item in (*base_limits(settings), *_setting_limits(settings))],
        ]
    )
    files = {"values.yaml": dump(values, header), "README.md": readme(settings, profile, server)}
    if settings.deploy.gc.enabled and settings.backend == "postgres":
        cron = helm_objects.gc_cronjob(settings, secret_names(settings))
        files["gc-cronjob.yaml"] = dump(
            cron, "mlflow gc on a schedule (the chart has none): kubectl apply -f gc-cronjob.yaml"
        )
    files["Dockerfile"] = dockerfile(profile, settings.deploy.base_image)
    return files


def values_document(settings: Settings, server: Process) -> dict[str, Any]:
    names = secret_names(settings)
    repo, tag = _split_image(settings.deploy.image)
    values: dict[str, Any] = {
        "replicaCount": settings.deploy.replicas,
        "image": {"repository": repo, "tag": tag},
        # The chart's migration init container would otherwise run its own default image.
        "initImages": {"mlflowDbMigration": {"repository": repo, "tag": tag}},
        "strategy": {"type": facts.helm_strategy(settings)},
    }
    extra_args: dict[str, str] = {}
    extra_flags: list[str] = []
    env: dict[str, str] = {}
    _translate_args(settings, server.argv, values, extra_args, extra_flags, names)
    _translate_env(settings, server, values, env, names)
    if extra_args:
        values["extraArgs"] = extra_args
    if extra_flags:
        values["extraFlags"] = extra_flags
    if env:
        values["extraEnvVars"] = {**values.get("extraEnvVars", {}), **env}
    res = settings.deploy.resources
    if res.requests or res.limits:
        values["resources"] = {k: dict(v) for k, v in (("requests", res.requests), ("limits", res.limits)) if v}
    period = 10
    values["livenessProbe"] = {
        "initialDelaySeconds": 20,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": max(3, math.ceil(settings.server.start_timeout / period)),
    }
    values["readinessProbe"] = {
        "initialDelaySeconds": 10,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    if settings.server.tls.enabled:
        values["ingress"] = ingress_values(settings)
    if facts.helm_persistence(settings):
        values.update(helm_objects.persistence_values(settings))
    init = helm_objects.sqlite_init_containers(settings, server)
    if init:
        values["initContainers"] = init
    return values


def _translate_args(
    settings: Settings,
    argv: tuple[str, ...],
    values: dict[str, Any],
    extra_args: dict[str, str],
    extra_flags: list[str],
    names: dict[str, str],
) -> None:
    if argv[:2] != ("mlflow", "server"):
        raise RuntimeError(f"expected `mlflow server ...`, got {argv[:2]}")
    args = list(argv[2:])
    flags = {"--serve-artifacts", "--no-serve-artifacts", "--enable-workspaces"}
    artifacts: dict[str, Any] = {}
    while args:
        flag = args.pop(0)
        value = "" if flag in flags else args.pop(0)
        if flag in _CHART_DEFAULTS:
            if value != _CHART_DEFAULTS[flag]:
                raise RuntimeError(f"{flag} {value}: the chart sets {_CHART_DEFAULTS[flag]}")
        elif flag == "--workers":
            extra_args["workers"] = value  # the chart's schema types it as a string
        elif flag == "--serve-artifacts":
            artifacts["proxiedArtifactStorage"] = True
        elif flag == "--no-serve-artifacts":
            artifacts["proxiedArtifactStorage"] = False
            extra_flags.append("noServeArtifacts")
        elif flag in ("--artifacts-destination", "--default-artifact-root"):
            proxied = flag == "--artifacts-destination"
            artifacts["proxiedArtifactStorage"] = proxied
            if value.startswith("s3://"):
                bucket, _, path = value.removeprefix("s3://").partition("/")
                artifacts["s3"] = {
                    "enabled": True,
                    "bucket": bucket,
                    "path": path,
                    "existingSecret": {
                        "name": names["s3"],
                        "keyOfAccessKeyId": "AWS_ACCESS_KEY_ID",
                        "keyOfSecretAccessKey": "AWS_SECRET_ACCESS_KEY",
                    },
                }
            else:
                artifacts["defaultArtifactsDestination" if proxied else "defaultArtifactRoot"] = value
        elif flag == "--allowed-hosts":
            hosts = value.split(",")
            service = settings.deploy.name  # what in-cluster clients send as Host (port 80)
            values["serverAllowedHosts"] = hosts if service in hosts else [*hosts, service]
        elif flag == "--expose-prometheus":
            extra_args["exposePrometheus"] = value
        elif flag == "--uvicorn-opts":
            opts = _without_tls(value)  # the ingress terminates TLS; the pod serves plain HTTP to it
            if opts:
                extra_args["uvicornOpts"] = opts
                values["log"] = {"enabled": False}
        elif flag == "--app-name" and value == "basic-auth":
            values["auth"] = _auth(settings, names)
        elif flag == "--enable-workspaces":
            # The chart has no value for it; `mlflow server` reads the flag's variable when it is not given.
            extra_args_env = values.setdefault("extraEnvVars", {})
            extra_args_env["MLFLOW_ENABLE_WORKSPACES"] = "true"
        else:
            raise RuntimeError(f"the Helm export does not know `mlflow server {flag}`; map it in deploy/helm.py")
    values["artifactRoot"] = artifacts


def _without_tls(opts: str) -> str:
    words = shlex.split(opts)
    kept = []
    while words:
        word = words.pop(0)
        if word in ("--ssl-certfile", "--ssl-keyfile"):
            words.pop(0)
        else:
            kept.append(word)
    return shlex.join(kept)


def _translate_env(
    settings: Settings, server: Process, values: dict[str, Any], env: dict[str, str], names: dict[str, str]
) -> None:
    db = facts.database(settings)
    for key, value in server.env.items():
        if key == "MLFLOW_BACKEND_STORE_URI":
            assert isinstance(value, str)
            if db is None:
                values["backendStore"] = {"defaultSqlitePath": value.removeprefix("sqlite:///")}
            else:
                env.update(_libpq_env(value))
                values["backendStore"] = {
                    "databaseMigration": True,
                    "databaseConnectionCheck": True,
                    "postgres": {
                        "enabled": True,
                        "host": db.host,
                        "port": db.port,
                        "database": db.name,
                        "driver": "psycopg2",
                    },
                    "existingDatabaseSecret": {
                        "name": names["db"],
                        "usernameKey": "username",
                        "passwordKey": "password",
                    },
                }
        elif key == "MLFLOW_FLASK_SERVER_SECRET_KEY":
            # Later envFrom sources win: ours over the chart's, which it regenerates on every render.
            values["extraSecretNamesForEnvFrom"] = [names["flask"]]
        elif key in ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD"):
            pass  # secretKeyRefs: existingDatabaseSecret, artifactRoot.s3.existingSecret, auth.existingAdminSecret
        elif key == "MLFLOW_AUTH_CONFIG_PATH":
            pass  # the chart writes and mounts the ini itself (auth.*)
        elif isinstance(value, SecretRef):
            raise RuntimeError(f"the Helm export has no Secret for {key}; map it in deploy/helm.py")
        else:
            env[key] = value


# Options of a PostgreSQL URI -> the libpq variable that says the same (the chart builds the URI
# from PGHOST/PGPORT/PGDATABASE and cannot carry options; libpq reads these for every connection).
LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}


def _libpq_env(uri: str) -> dict[str, str]:
    out = {}
    for key, value in make_url(uri).query.items():
        if key not in LIBPQ_ENV or not isinstance(value, str):
            raise UserError(
                f"postgres.uri option {key!r} has no libpq variable the chart could pass; "
                f"use one of {', '.join(LIBPQ_ENV)} or drop it"
            )
        out[LIBPQ_ENV[key]] = value
    return out


def _auth(settings: Settings, names: dict[str, str]) -> dict[str, Any]:
    auth = settings.server.auth
    out: dict[str, Any] = {
        "enabled": True,
        "defaultPermission": auth.default_permission,
        "existingAdminSecret": {"name": names["admin"], "usernameKey": "username", "passwordKey": "password"},
    }
    db = facts.database(settings)
    if facts.auth_on_postgres(settings) and db is not None:
        out["postgres"] = {
            "enabled": True,
            "host": db.host,
            "port": db.port,
            "database": settings.deploy.auth_database,
            "driver": "psycopg2",
            "existingSecret": {"name": names["db"], "usernameKey": "username", "passwordKey": "password"},
        }
    else:
        # On the volume. The trailing slash matters: chart 1.11.5 joins folder and file name
        # without one (sqlite:////mlflow/databasic_auth.db).
        out["sqliteFullPath"] = CONTAINER_DATA + "/"
    return out


def _split_image(image: str) -> tuple[str, str]:
    repo, sep, tag = image.rpartition(":")
    return (repo, tag) if sep and "/" not in tag else (image, "latest")


def readme(settings: Settings, profile: str, server: Process) -> str:
    names = secret_names(settings)
    release = settings.deploy.name
    secrets = server.secrets()
    lines = [f"# {release} on Kubernetes: chart {CHART['repo']}/{CHART['name']} {CHART_VERSION}", ""]
    if not secrets:
        lines += [f"Generated by mlflow-ops from profile `{profile}`. These settings need no Secret.", ""]
    else:
        lines += [
            f"Generated by mlflow-ops from profile `{profile}`. values.yaml names Secrets; create them first",
            "(or apply `secrets.yaml`, which `inv deploy.helm --write-secrets` writes with mode 0600):",
            "",
            "```sh",
        ]
    db = facts.database(settings)
    if "postgres_password" in secrets and db is not None:
        lines.append(
            f"kubectl create secret generic {names['db']} --from-literal=username={db.user} "
            '--from-literal=password="$POSTGRES_PASSWORD"'
        )
    if "admin_password" in secrets:
        lines.append(
            f"kubectl create secret generic {names['admin']} --from-literal=username={settings.server.auth.admin_user} "
            '--from-literal=password="$MLFLOW_AUTH_ADMIN_PASSWORD"'
        )
    if "flask_secret_key" in secrets:
        lines.append(
            f"kubectl create secret generic {names['flask']} "
            "--from-literal=MLFLOW_FLASK_SERVER_SECRET_KEY=\"$(python3 -c 'import secrets; print(secrets.token_hex(32))')\""
        )
    if "s3_access_key_id" in secrets:
        lines.append(
            f'kubectl create secret generic {names["s3"]} --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" '
            '--from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"'
        )
    if settings.server.tls.enabled:
        if not secrets:
            lines[-1:] = ["values.yaml names the ingress's TLS Secret; create it first:", "", "```sh"]
        lines.append(
            f"kubectl create secret tls {tls_secret_name(settings)} --cert=server.crt --key=server.key"
            "   # a certificate for " + str(settings.deploy.public_host)
        )
    if secrets or settings.server.tls.enabled:
        lines += ["```", ""]
    lines += [
        "Build the image from `Dockerfile` and push it as `" + settings.deploy.image + "`, then:",
        "",
        "```sh",
        f"helm repo add {CHART['repo']} {CHART['url']}",
        f"helm install {release} {CHART['repo']}/{CHART['name']} --version {CHART_VERSION} -f values.yaml",
    ]
    if settings.deploy.gc.enabled and settings.backend == "postgres":
        lines.append("kubectl apply -f gc-cronjob.yaml")
    lines += ["```", ""]
    if facts.auth_on_postgres(settings):
        lines += [
            f"The database `{settings.deploy.auth_database}` must exist on the PostgreSQL server (auth tables).",
            "",
        ]
    return "\n".join(lines)
