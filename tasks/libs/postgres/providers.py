"""Where PostgreSQL comes from: a container, the machine's binaries, or a server someone else runs."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tasks.libs.core.credentials import postgres_uri
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.postgres.binaries import find_binaries
from tasks.libs.postgres.connection import check_reachable


class Provider(Protocol):
    """What every provider does; a provider that cannot do one says so with a UserError."""

    name: str

    def start(self) -> str: ...
    def stop(self) -> str: ...
    def status(self) -> dict: ...
    def logs(self, lines: int) -> str: ...
    def wipe(self) -> None: ...


def provider_for(settings: Settings, *, docker_client_factory=None) -> Provider:
    """The provider config names; `auto` reuses the last one started, else docker, else local."""
    # Imported here, so that `import docker` costs only who needs it.
    from tasks.libs.postgres.container import DockerPostgres
    from tasks.libs.postgres.local import LocalPostgres

    if docker_client_factory is None:  # the engine the tool uses: ours while it runs, else DOCKER_HOST
        from tasks.libs.engine.daemon import client_factory

        docker_client_factory = client_factory(settings)
    choice: str = settings.postgres.provider
    if choice == "auto":
        choice = remembered_provider(settings) or _detect(settings, docker_client_factory)
    if choice == "external":
        return ExternalPostgres(settings)
    if choice == "docker":
        return DockerPostgres(settings, client_factory=docker_client_factory)
    return LocalPostgres(settings)


def remember_provider(settings: Settings, name: str) -> None:
    path = _choice_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n")


def remembered_provider(settings: Settings) -> str | None:
    path = _choice_file(settings)
    return path.read_text().strip() if path.is_file() else None


class ExternalPostgres:
    """A server someone else runs: we only connect to it."""

    name = "external"

    def __init__(self, settings: Settings):
        self.settings = settings

    def start(self) -> str:
        problem = check_reachable(self.settings)
        if problem:
            raise UserError(f"the external PostgreSQL is not usable ({problem}); check postgres.uri")
        return "external PostgreSQL answers; nothing to start"

    def stop(self) -> str:
        return "external PostgreSQL is not ours to stop; left running"

    def status(self) -> dict:
        problem = check_reachable(self.settings)
        return {
            "provider": self.name,
            "running": problem is None,
            "problem": problem,
            "url": postgres_uri(self.settings),
        }

    def logs(self, lines: int) -> str:
        raise UserError("the external PostgreSQL's logs are on its own host")

    def wipe(self) -> None:
        raise UserError("refusing to wipe an external PostgreSQL: it is not ours; drop its tables yourself")


def _detect(settings: Settings, docker_client_factory) -> str:
    from tasks.libs.postgres.container import engine_answers

    if engine_answers(docker_client_factory):
        return "docker"
    if find_binaries(settings.postgres.local.bin_dir):
        return "local"
    raise UserError(
        "no Docker engine answers and no PostgreSQL server binaries were found: "
        "install Docker, or `apt-get install postgresql` (or set postgres.local.bin_dir), "
        "or point postgres.provider=external at a server"
    )


def _choice_file(settings: Settings) -> Path:
    return settings.state_path / "postgres" / "provider"
