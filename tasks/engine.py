"""`engine` collection: a Docker engine for deploy.up and the docker provider, ours or one that answers."""

from __future__ import annotations

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.engine import daemon

COMMON = {"profile": PROFILE_HELP, "config": CONFIG_HELP}


@task(help=COMMON)
def start(c, profile=None, config=None):
    """Use a Docker engine that answers, or start a private dockerd under the state dir; print DOCKER_HOST."""
    settings = settings_from(profile, config).settings
    with user_errors():
        info = daemon.start(settings)
    print(f"DOCKER_HOST={info.host}")
    print(f"for the docker CLI: {info.export}")


@task(help=COMMON)
def status(c, profile=None, config=None):
    """Show the engine the tool uses: ours (pid, socket, bridge, counts) or another; exit 3 if none."""
    settings = settings_from(profile, config).settings
    with user_errors():
        state = daemon.status(settings)
    if state["engine"] is None:
        raise Exit(f"no Docker engine runs (ours would answer at unix://{daemon.socket_path(settings)})", code=3)
    for key, value in state.items():
        print(f"{key:>11}: {value}")
    if state.get("answers", "yes") != "yes":
        raise Exit("our dockerd runs but does not answer; `inv engine.stop`, then `inv engine.start`", code=1)


@task(help=COMMON)
def stop(c, profile=None, config=None):
    """Stop our private engine with its containers and networks (volumes and images stay); never another engine."""
    settings = settings_from(profile, config).settings
    with user_errors():
        print(daemon.stop(settings))
