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
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from tasks.libs.core.errors import ConfigError
from tasks.libs.core.settings.base import PROJECT_ROOT
from tasks.libs.core.settings.model import Settings

CONFIG_DIR = PROJECT_ROOT / "config"
ENV_PREFIX = "MLFLOW_OPS_"
# Env variables that choose layers rather than set values.
ENV_PROFILE = ENV_PREFIX + "PROFILE"
ENV_CONFIG_FILE = ENV_PREFIX + "CONFIG"
LAYER_SELECTORS = {ENV_PROFILE, ENV_CONFIG_FILE}


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
