"""Kubernetes objects we write ourselves next to the chart: volume claim, init containers, gc, secrets.

kubernetes-validate --strict checks each of them offline (deploy.validate); the chart's own
objects are checked only when the chart is at hand (MLFLOW_OPS_HELM_CHART).
"""

from __future__ import annotations

from typing import Any

from tasks.libs.core.settings import Settings
from tasks.libs.deploy import facts
from tasks.libs.deploy.image import UID
from tasks.libs.deploy.process import CONTAINER_DATA, Process, SecretRef, container_placement, gc_process

VOLUME = "mlflow-data"
# The chart's own container securityContext (values.yaml `securityContext`), for the containers we add.
SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
}
# Process variable -> (Secret, key) for the secretKeyRefs of the objects we write.
SECRET_KEYS = {
    "PGPASSWORD": ("db", "password"),
    "MLFLOW_TRACKING_PASSWORD": ("admin", "password"),
    "AWS_ACCESS_KEY_ID": ("s3", "AWS_ACCESS_KEY_ID"),
    "AWS_SECRET_ACCESS_KEY": ("s3", "AWS_SECRET_ACCESS_KEY"),
}


def persistence_values(settings: Settings) -> dict[str, Any]:
    """A ReadWriteOnce claim at /mlflow/data (the SQLite file, local artifacts, the auth db)."""
    claim = f"{settings.deploy.name}-data"
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": settings.deploy.helm.storage}},
        },
    }
    return {
        "extraVolumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": claim}}],
        "extraVolumeMounts": [{"name": VOLUME, "mountPath": CONTAINER_DATA}],
        "extraDeploy": [pvc],
    }


def sqlite_init_containers(settings: Settings, server: Process) -> list[dict[str, Any]]:
    """SQLite: WAL on (as server.start does) and `mlflow db upgrade`, before the server starts.
    The chart migrates only a database server's store."""
    if settings.backend != "sqlite":
        return []
    store = server.env["MLFLOW_BACKEND_STORE_URI"]
    assert isinstance(store, str)
    mounts = [{"name": VOLUME, "mountPath": CONTAINER_DATA}, {"name": "tmp", "mountPath": "/tmp"}]  # chart's tmp
    base = {"image": settings.deploy.image, "securityContext": SECURITY_CONTEXT, "volumeMounts": mounts}
    out = []
    if settings.sqlite.wal:
        path = store.removeprefix("sqlite:///")
        code = f"import sqlite3; sqlite3.connect('{path}').execute('PRAGMA journal_mode=WAL')"
        out.append({"name": "sqlite-wal", "command": ["python", "-c", code], **base})
    out.append({"name": "migrate", "command": ["mlflow", "db", "upgrade", store], **base})
    return out


def init_containers_pod(values: dict[str, Any]) -> dict[str, Any] | None:
    """values.initContainers as a Pod, so that kubernetes-validate can check them."""
    init = values.get("initContainers")
    if not init:
        return None
    volumes = [*values.get("extraVolumes", []), {"name": "tmp", "emptyDir": {}}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "init-containers"},
        "spec": {"containers": init, "volumes": volumes},
    }


def gc_cronjob(settings: Settings, names: dict[str, str]) -> dict[str, Any]:
    """`mlflow gc` on deploy.gc.cron, with the chart pods' Secrets. PostgreSQL only."""
    name = settings.deploy.name
    tracking = f"http://{name}:80" if facts.gc_needs_server(settings) else None  # the chart's Service
    process = gc_process(settings, container_placement(bundled_database=False), tracking_uri=tracking)
    env: list[dict[str, Any]] = []
    for key, value in process.env.items():
        if isinstance(value, SecretRef):
            secret, secret_key = SECRET_KEYS[key]
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": names[secret], "key": secret_key}}})
        else:
            env.append({"name": key, "value": value})
    container = {
        "name": "gc",
        "image": settings.deploy.image,
        "command": list(process.argv),
        "env": env,
        "securityContext": SECURITY_CONTEXT,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": f"{name}-gc"},
        "spec": {
            "schedule": settings.deploy.gc.cron,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 1,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [container],
                            "volumes": [{"name": "tmp", "emptyDir": {}}],
                        }
                    },
                }
            },
        },
    }


def secret_objects(settings: Settings, names: dict[str, str], values: dict[str, str]) -> list[dict[str, Any]]:
    """The Secrets values.yaml names, with their values (--write-secrets only)."""
    data: dict[str, dict[str, str]] = {}
    db = facts.database(settings)
    if "postgres_password" in values and db is not None:
        data[names["db"]] = {"username": db.user, "password": values["postgres_password"]}
    if "admin_password" in values:
        data[names["admin"]] = {"username": settings.server.auth.admin_user, "password": values["admin_password"]}
    if "flask_secret_key" in values:
        data[names["flask"]] = {"MLFLOW_FLASK_SERVER_SECRET_KEY": values["flask_secret_key"]}
    if "s3_access_key_id" in values:
        data[names["s3"]] = {
            "AWS_ACCESS_KEY_ID": values["s3_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": values["s3_secret_access_key"],
        }
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "stringData": fields}
        for name, fields in data.items()
    ]
