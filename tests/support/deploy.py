"""Helpers for the deploy tests: settings with fixed paths for goldens, readers for what we write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from tasks.libs.core.settings import PROJECT_ROOT, Settings, load_settings
from tests.support.settings import make_settings

GOLDEN_DIR = PROJECT_ROOT / "tests" / "golden" / "deploy"
# Goldens must not depend on the checkout: the ci profile's state dir is relative (under the
# checkout) and deploy.systemd.python defaults to this venv's Python.
# What would make the goldens depend on the machine that writes them: paths, and `workers: auto`
# (one per core here) pinned to 2.
GOLDEN_PATHS = {
    "state_dir": "/var/lib/mlflow-ops",
    "deploy.systemd.python": "/opt/mlflow-ops/.venv/bin/python",
    "server.workers": 2,
}
# name -> (profile, extra settings): the two profiles, ci on PostgreSQL (Compose runs its own), prod with TLS,
# prod with workspaces.
GOLDEN_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "ci": ("ci", {}),
    "prod": ("prod", {}),
    "ci-postgres": ("ci", {"backend": "postgres"}),
    # uvicorn's TLS for Compose and systemd, the ingress's TLS block for Helm
    "prod-tls": ("prod", {"server.tls.enabled": True}),
    "prod-workspaces": ("prod", {"server.workspaces": True}),
}
UPDATE_ENV = "MLFLOW_OPS_UPDATE_GOLDENS"

# Settings that exercise every substitution: another SQLite path, all interfaces, metrics, our
# PostgreSQL, auth on either backend, S3 direct and proxied.
SMALL_POOLS: dict[str, Any] = {
    "server.env": {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "5"}
}
S3: dict[str, Any] = {
    "artifacts.store": "s3",
    "artifacts.s3.provider": "external",
    "artifacts.s3.endpoint_url": "https://s3.example:9000",
    "artifacts.s3.access_key_id": "AKIDEXAMPLE",
    "artifacts.s3.secret_access_key": "s3cr3t-key",
}
VARIANTS: dict[str, dict[str, Any]] = {
    "sqlite": {},
    "sqlite elsewhere, all interfaces, metrics": {
        "sqlite.path": "/srv/mlflow/mlflow.db",
        "server.host": "0.0.0.0",
        "server.metrics": True,
    },
    "postgres local": {"backend": "postgres", "postgres.password": "pw"},
    "postgres, auth, metrics": {
        "backend": "postgres",
        "postgres.password": "pw",
        "server.auth.enabled": True,
        "server.metrics": True,
        **SMALL_POOLS,
    },
    "s3 direct": {**S3, "artifacts.mode": "direct"},
    "s3 proxied, auth on sqlite": {
        **S3,
        "server.auth.enabled": True,
        "server.allowed_hosts": ["*.example.com", "127.0.0.1:3111"],
    },
}


def settings_for(state_dir: Path, variant: str) -> Settings:
    return make_settings(state_dir, **{"server.port": 3111, "postgres.port": 3110, **VARIANTS[variant]})


def profile_settings(profile: str | None, **overrides) -> Settings:
    """A profile's settings, hermetic (no env, no config/local.yaml), with overrides on top."""
    return load_settings(profile=profile, overrides=overrides, environ={}, local_file=False).settings


def golden_settings(case: str) -> Settings:
    profile, extra = GOLDEN_CASES[case]
    return profile_settings(profile, **GOLDEN_PATHS, **extra)


def updating_goldens() -> bool:
    return os.environ.get(UPDATE_ENV) == "1"


def read_tree(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}


def write_tree(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_bytes(text.encode())


def compose_service(text: str, service: str) -> dict:
    return yaml.safe_load(text)["services"][service]


def unescape_compose(value: str) -> str:
    return value.replace("$$", "$")


def unit_entries(text: str, section: str = "Service") -> list[tuple[str, str]]:
    """(key, value) pairs of one section of a unit file, in order."""
    out, current = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def unit_environment(text: str) -> dict[str, str]:
    """Environment="K=V" lines, unquoted as systemd reads them (with %% -> %)."""
    env = {}
    for key, value in unit_entries(text):
        if key == "Environment":
            assert value.startswith('"') and value.endswith('"'), value
            pair = value[1:-1].replace('\\"', '"').replace("\\\\", "\\").replace("%%", "%")
            name, _, val = pair.partition("=")
            env[name] = val
    return env


def env_file_values(text: str) -> dict[str, str]:
    """An EnvironmentFile of single-quoted values (what --write-secrets writes)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert value.startswith("'") and value.endswith("'"), line
            out[key] = value[1:-1]
    return out
