"""Layered configuration: YAML files, environment and flags merged into one validated Settings.

Layers, later wins: config/defaults.yaml < config/backends/<backend>.yaml
< config/profiles/<profile>.yaml < user file (config/local.yaml or --config)
< MLFLOW_OPS_* environment variables < command-line flags.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.libs.core.deploy_settings import DeploySettings
from tasks.libs.core.engine_settings import EngineSettings
from tasks.libs.core.errors import ConfigError
from tasks.libs.core.lifecycle_settings import LifecycleSettings
from tasks.libs.core.scaleout_settings import ClusterSettings, MonitoringSettings
from tasks.libs.core.security_settings import SecuritySettings
from tasks.libs.core.strict import Port, _Strict

PROJECT_ROOT = Path(__file__).resolve().parents[3]  # tasks/libs/core/settings.py -> the checkout
CONFIG_DIR = PROJECT_ROOT / "config"
ENV_PREFIX = "MLFLOW_OPS_"
# Env variables that choose layers rather than set values.
ENV_PROFILE = ENV_PREFIX + "PROFILE"
ENV_CONFIG_FILE = ENV_PREFIX + "CONFIG"
LAYER_SELECTORS = {ENV_PROFILE, ENV_CONFIG_FILE}


class AuthSettings(_Strict):
    enabled: bool
    admin_user: str
    admin_password: SecretStr | None
    default_permission: Literal["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"]

    @field_validator("admin_password")
    @classmethod
    def _not_the_old_default(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() in ("password1234", ""):
            raise ValueError("this is MLflow's old default admin password; choose another or leave it null")
        return value


def auto_workers() -> int:
    """One uvicorn worker per core of this machine (at most 8)."""
    return max(1, min(os.cpu_count() or 1, 8))


class ServerSettings(_Strict):
    host: str
    port: int = Port
    workers: int = Field(ge=1, le=64)
    job_execution: bool
    allowed_hosts: list[str] | None

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: object) -> object:
        return auto_workers() if value == "auto" else value

    start_timeout: float = Field(gt=0)
    stop_grace: float = Field(ge=0)
    fallback_to_sqlite: bool
    uvicorn_opts: str
    env: dict[str, str]
    metrics: bool
    auth: AuthSettings

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


class S3Settings(_Strict):
    provider: Literal["embedded", "external"]
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str
    endpoint_url: str | None
    region: str
    host: str
    port: int = Port
    access_key_id: SecretStr | None
    secret_access_key: SecretStr | None
    start_timeout: float = Field(gt=0)

    @field_validator("prefix")
    @classmethod
    def _relative_prefix(cls, value: str) -> str:
        return value.strip("/")


class ArtifactsServerSettings(_Strict):
    port: int = Port
    workers: int = Field(ge=1, le=64)


class ArtifactsSettings(_Strict):
    store: Literal["local", "s3"]
    mode: Literal["proxied", "direct", "split"]
    s3: S3Settings
    artifacts_server: ArtifactsServerSettings

    @model_validator(mode="after")
    def _local_is_proxied(self) -> ArtifactsSettings:
        if self.store == "local" and self.mode != "proxied":
            raise ValueError(f"artifacts.mode {self.mode!r} needs artifacts.store s3; local artifacts are proxied")
        return self


class SqliteSettings(_Strict):
    path: str | None
    wal: bool

    @field_validator("path")
    @classmethod
    def _absolute_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("sqlite:") or value.strip() == ":memory:":
            raise ValueError("give a file path, not a URI; an in-memory database loses every run")
        if not os.path.isabs(value):
            raise ValueError(f"{value!r} is relative; give an absolute path or leave it null")
        return value


class DockerSettings(_Strict):
    image: str
    container: str
    volume: str


class LocalPostgresSettings(_Strict):
    bin_dir: str | None
    os_user: str
    cluster_dir: str | None
    parameters: dict[str, str]

    @field_validator("cluster_dir")
    @classmethod
    def _absolute_dir(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError(f"{value!r} is relative; give an absolute path or leave it null")
        return value


class PostgresSettings(_Strict):
    provider: Literal["auto", "docker", "local", "external"]
    host: str
    port: int = Port
    database: str
    user: str
    password: SecretStr | None
    uri: SecretStr | None
    start_timeout: float = Field(gt=0)
    stop_timeout: float = Field(gt=0)
    docker: DockerSettings
    local: LocalPostgresSettings

    @field_validator("uri")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = value.get_secret_value().partition("://")[0]
            if scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
                raise ValueError(f"scheme {scheme!r} is not PostgreSQL; write postgresql://user:password@host:port/db")
        return value


class Settings(_Strict):
    state_dir: str
    backend: Literal["sqlite", "postgres"]
    server: ServerSettings
    sqlite: SqliteSettings
    postgres: PostgresSettings
    artifacts: ArtifactsSettings
    security: SecuritySettings
    deploy: DeploySettings
    lifecycle: LifecycleSettings
    cluster: ClusterSettings
    monitoring: MonitoringSettings
    engine: EngineSettings

    @model_validator(mode="after")
    def _no_port_twice(self) -> Settings:
        seen: dict[int, str] = {}
        for key, port in ports_in_use(self):
            if port in seen:
                raise ValueError(f"{key} and {seen[port]} are both port {port}; give one of them another port")
            seen[port] = key
        return self

    @property
    def state_path(self) -> Path:
        path = Path(self.state_dir).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def sqlite_file(self) -> Path:
        return Path(self.sqlite.path) if self.sqlite.path else self.state_path / "mlflow.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_path / "artifacts"


def ports_in_use(settings: Settings) -> list[tuple[str, int]]:
    """(key, port) of every listener the settings would start: always the server and PostgreSQL,
    the rest when enabled (a cluster's ports count always: `cluster.up` may start any day)."""
    found = [("server.port", settings.server.port), ("postgres.port", settings.postgres.port)]
    artifacts = settings.artifacts
    if artifacts.store == "s3" and artifacts.s3.provider == "embedded":
        found.append(("artifacts.s3.port", artifacts.s3.port))
    if artifacts.store == "s3" and artifacts.mode == "split":
        found.append(("artifacts.artifacts_server.port", artifacts.artifacts_server.port))
    cluster = settings.cluster
    found += [("cluster.lb.port", cluster.lb.port), ("cluster.lb.stats_port", cluster.lb.stats_port)]
    found += [(f"cluster.first_port (+{i}: replica r{i})", cluster.first_port + i) for i in range(cluster.replicas)]
    if cluster.pgbouncer.enabled:
        found.append(("cluster.pgbouncer.port", cluster.pgbouncer.port))
    if cluster.read_replica.enabled:
        found.append(("cluster.read_replica.port", cluster.read_replica.port))
    if settings.monitoring.postgres_exporter.enabled:
        found.append(("monitoring.postgres_exporter.port", settings.monitoring.postgres_exporter.port))
    return found


@dataclass
class Loaded:
    """The validated settings plus where every value came from."""

    settings: Settings
    sources: dict[str, str] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)


def load_settings(
    *,
    profile: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    local_file: bool = True,
) -> Loaded:
    """Merge every layer and validate. Raises ConfigError with a one-line message.

    local_file=False ignores config/local.yaml (tests and benches stay hermetic with environ={}).
    """
    environ = dict(os.environ if environ is None else environ)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers: list[str] = []

    def apply(data: dict[str, Any], source: str) -> None:
        _merge(merged, data, sources, source)
        layers.append(source)

    apply(_read_yaml(CONFIG_DIR / "defaults.yaml", required=True), "config/defaults.yaml")

    env_values = _env_layer(environ)
    profile = profile or environ.get(ENV_PROFILE)
    user_file = _user_file(config_file or environ.get(ENV_CONFIG_FILE), local_file=local_file)
    user_data = _read_yaml(user_file, required=True, empty_ok=False) if user_file else {}

    # The backend layer is picked by the backend that the higher layers ask for.
    env_flat = {key: value for key, (value, _) in env_values.items()}
    profile_data = _read_yaml(_profile_file(profile), required=True) if profile else {}
    backend = _first_set("backend", flags, env_flat, user_data, profile_data, merged)
    backend_file = CONFIG_DIR / "backends" / f"{backend}.yaml"
    if isinstance(backend, str) and backend_file.is_file():
        apply(_read_yaml(backend_file, required=True), _rel(backend_file))
    if profile:
        apply(profile_data, _rel(_profile_file(profile)))
    if user_data and user_file:
        apply(user_data, _rel(user_file))
    for key, (value, var) in env_values.items():
        apply(_nest(key, value), f"env {var}")
    for key, value in flags.items():
        apply(_nest(key, value), f"flag --{key.split('.')[-1].replace('_', '-')}")

    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from None
    return Loaded(settings=settings, sources=sources, layers=layers)


def as_rows(loaded: Loaded) -> list[tuple[str, str, str]]:
    """(key, value, source) for every leaf, secrets masked."""
    data = loaded.settings.model_dump(mode="python")
    rows = []
    for key, value in _flatten(data):
        if isinstance(value, SecretStr):
            value = "***" if value.get_secret_value() else ""
        rows.append((key, "null" if value is None else str(value), loaded.sources.get(key, "")))
    return rows


# --- helpers --------------------------------------------------------------------------


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def _user_file(explicit: str | None, *, local_file: bool) -> Path | None:
    if explicit:
        return Path(explicit).expanduser()
    local = CONFIG_DIR / "local.yaml"
    return local if local_file and local.is_file() else None


def _profile_file(profile: str) -> Path:
    path = CONFIG_DIR / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "profiles").glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}{_did_you_mean(profile, known)}; known: {', '.join(known)}")
    return path


def _read_yaml(path: Path, *, required: bool, empty_ok: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConfigError(f"{path}: config file not found")
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "constructor for the tag" in problem:
            problem = "tags such as !!python/object are refused; only plain YAML is loaded"
        raise ConfigError(f"{_rel(path)}:{where}: not valid YAML ({problem})") from None
    if data is None:
        if not empty_ok:  # most likely a file written by mistake, or the wrong file named
            raise ConfigError(f"{_rel(path)}: config file is empty; add settings (or {{}}) or stop naming it")
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_rel(path)}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _env_layer(environ: dict[str, str]) -> dict[str, tuple[Any, str]]:
    """MLFLOW_OPS_SERVER__PORT=3200 -> {'server.port': ('3200', var)}."""
    values = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var in LAYER_SELECTORS:
            continue
        key = var[len(ENV_PREFIX) :].lower().replace("__", ".")
        value: Any = raw
        if raw.strip()[:1] in ("[", "{") or raw.strip() in ("null", "~"):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"env {var}: not valid YAML") from None
        values[key] = (value, var)
    return values


def _first_set(key: str, *layers: dict[str, Any]) -> Any:
    return next((layer[key] for layer in layers if key in layer), None)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _merge(into: dict, data: dict, sources: dict[str, str], source: str, prefix: str = "") -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict) and into[key] is not value:
            _merge(into[key], value, sources, source, dotted + ".")
        else:
            into[key] = value
            for old in [k for k in sources if k.startswith(dotted + ".")]:
                del sources[old]
            _record(value, dotted, sources, source)


def _record(value: Any, dotted: str, sources: dict[str, str], source: str) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _record(v, f"{dotted}.{k}", sources, source)
    else:
        sources[dotted] = source


def _flatten(data: Any, prefix: str = ""):
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data


def _did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _explain(exc: ValidationError, sources: dict[str, str]) -> str:
    """The first validation error as one line naming the key, the problem and its source."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    source = sources.get(key) or next(
        (s for k, s in sources.items() if k.startswith(key + ".")), "config/defaults.yaml"
    )
    if err["type"] == "extra_forbidden":
        model: Any = Settings
        for part in loc[:-1]:
            model = model.model_fields[part].annotation
        close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
        hint = f" (did you mean {'.'.join(loc[:-1] + close)!r}?)" if close else ""
        return f"{source}: unknown setting {key!r}{hint}"
    if err["type"] == "missing":
        return f"{source}: required setting {key!r} is missing"
    given = err.get("input")
    shown = "***" if "password" in key or key.endswith("uri") else repr(given)
    message = err["msg"].removeprefix("Value error, ")
    if isinstance(given, dict):  # a check across keys: the message names them; never echo a section (secrets)
        named = [k for k in re.findall(r"[a-z_0-9]+(?:\.[a-z_0-9]+)+", message) if k in sources]
        source = next((sources[k] for k in named if sources[k] != "config/defaults.yaml"), source)
        return f"{source}: {message}"
    if err["type"] == "literal_error":
        options = err.get("ctx", {}).get("expected", "")
        hint = _did_you_mean(str(given), re.findall(r"'([^']*)'", options))
        return f"{source}: {key} = {shown} is not one of {options}{hint}"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {key} = {shown}: {message}{more}"
