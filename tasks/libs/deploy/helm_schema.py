"""Our JSON schema (Draft 7) for the values we write for community-charts/mlflow 1.11.5.

Written from the chart's documented values (charts/mlflow/values.yaml and README.md at tag
mlflow-1.11.5 in github.com/community-charts/helm-charts); the chart's own values.schema.json is
not copied into this repository. Every mapping we write is closed (additionalProperties: false),
so a misspelt or unknown key fails here as it fails against the chart's schema, which is closed at
the top level and in image, initImages, backendStore, artifactRoot and auth. Types follow the
chart: extraArgs values are strings (`workers: "2"`), ports integers, probes integers.
"""

from __future__ import annotations

from typing import Any

STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer", "minimum": 0}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
STRINGS: dict[str, Any] = {"type": "array", "items": STRING}
OBJECTS: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": STRING}


def closed(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


IMAGE = closed({"repository": STRING, "tag": STRING, "pullPolicy": {"enum": ["IfNotPresent", "Never", "Always"]}})
# existingDatabaseSecret / auth.existingAdminSecret / auth.postgres.existingSecret
SECRET_KEYS = closed({"name": STRING, "usernameKey": STRING, "passwordKey": STRING}, "name")
POSTGRES = closed(
    {
        "enabled": BOOLEAN,
        "host": STRING,
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "database": STRING,
        "user": STRING,
        "password": STRING,
        "driver": STRING,
        "existingSecret": SECRET_KEYS,
    }
)
PROBE = closed(
    {"initialDelaySeconds": INTEGER, "periodSeconds": INTEGER, "timeoutSeconds": INTEGER, "failureThreshold": INTEGER}
)
QUANTITIES = closed({"cpu": STRING, "memory": STRING})

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "community-charts/mlflow 1.11.5 values written by mlflow-ops",
    **closed(
        {
            "replicaCount": {"type": "integer", "minimum": 1},
            "image": IMAGE,
            "initImages": closed({"mlflowDbMigration": IMAGE}),
            "strategy": closed({"type": {"enum": ["RollingUpdate", "Recreate"]}}, "type"),
            "backendStore": closed(
                {
                    "databaseMigration": BOOLEAN,
                    "databaseConnectionCheck": BOOLEAN,
                    "defaultSqlitePath": STRING,
                    "postgres": POSTGRES,
                    "existingDatabaseSecret": SECRET_KEYS,
                }
            ),
            "artifactRoot": closed(
                {
                    "proxiedArtifactStorage": BOOLEAN,
                    "defaultArtifactRoot": STRING,
                    "defaultArtifactsDestination": STRING,
                    "s3": closed(
                        {
                            "enabled": BOOLEAN,
                            "bucket": STRING,
                            "path": STRING,
                            "existingSecret": closed(
                                {"name": STRING, "keyOfAccessKeyId": STRING, "keyOfSecretAccessKey": STRING}, "name"
                            ),
                        },
                        "bucket",
                    ),
                }
            ),
            "auth": closed(
                {
                    "enabled": BOOLEAN,
                    "defaultPermission": {"enum": ["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"]},
                    "existingAdminSecret": SECRET_KEYS,
                    "postgres": POSTGRES,
                    "sqliteFullPath": {"type": "string", "pattern": "/$"},  # the chart appends the file name
                }
            ),
            "extraSecretNamesForEnvFrom": STRINGS,
            "extraArgs": closed(
                {
                    "workers": {"type": "string", "pattern": "^[0-9]+$"},
                    "uvicornOpts": STRING,
                    "exposePrometheus": STRING,
                }
            ),
            "extraFlags": {"type": "array", "items": {"enum": ["noServeArtifacts", "serveArtifacts"]}},
            "log": closed({"enabled": BOOLEAN}),
            "extraEnvVars": STRING_MAP,
            "serverAllowedHosts": STRINGS,
            "resources": closed({"requests": QUANTITIES, "limits": QUANTITIES}),
            "livenessProbe": PROBE,
            "readinessProbe": PROBE,
            "extraVolumes": OBJECTS,
            "extraVolumeMounts": OBJECTS,
            "extraDeploy": OBJECTS,
            "ingress": closed(
                {
                    "enabled": BOOLEAN,
                    "className": STRING,
                    "hosts": {
                        "type": "array",
                        "items": closed(
                            {
                                "host": STRING,
                                "paths": {
                                    "type": "array",
                                    "items": closed(
                                        {
                                            "path": STRING,
                                            "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
                                        },
                                        "path",
                                    ),
                                },
                            },
                            "host",
                        ),
                    },
                    "tls": {"type": "array", "items": closed({"secretName": STRING, "hosts": STRINGS}, "secretName")},
                }
            ),
            "initContainers": OBJECTS,
        },
        "replicaCount",
        "image",
        "backendStore",
        "artifactRoot",
        "livenessProbe",
        "readinessProbe",
    ),
}
