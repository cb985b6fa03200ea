"""The `docker` provider: PostgreSQL in a named, labelled container, data in a named volume."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import docker
from docker.errors import APIError, DockerException, NotFound

from tasks.libs.core.credentials import postgres_password
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_ready
from tasks.libs.postgres.connection import wait_for_database

LABEL = "io.mlflow-ops.role"
ROLE = "postgres"
NO_ENGINE = (
    "no Docker engine answers ({reason}); `inv engine.start` starts one, or use the local provider instead: "
    "--provider local, or postgres.provider: local in config"
)


def engine_answers(client_factory=None) -> bool:
    try:
        (client_factory or docker.from_env)().ping()
        return True
    except DockerException:
        return False


class DockerPostgres:
    name = "docker"

    def __init__(
        self, settings: Settings, *, client_factory=None, database_ready: Callable[..., None] = wait_for_database
    ):
        self.settings = settings
        self.pg = settings.postgres
        self.cfg = settings.postgres.docker
        self._client_factory = client_factory or docker.from_env
        self._client = None
        self._database_ready = database_ready  # tests swap it: a fake engine serves no SQL
        self.notes: list[str] = []

    def start(self) -> str:
        container = self._our_container()
        if container is None:
            container = self._create()
            what = "created and started"
        else:
            container.reload()
            if container.status == "running":
                what = "already running (reused)"
            else:
                container.start()
                what = "started (existing container)"
        self._wait_healthy(container)
        self._database_ready(self.settings, timeout=self.pg.start_timeout)
        notes = "".join(f"{note}\n" for note in self.notes)
        return f"{notes}PostgreSQL container {self.cfg.container} {what} on {self.pg.host}:{self.pg.port}"

    def stop(self) -> str:
        container = self._our_container()
        if container is None:
            return f"no container named {self.cfg.container}"
        container.reload()
        if container.status != "running":
            return f"container {self.cfg.container} is not running"
        container.stop(timeout=int(self.pg.stop_timeout))
        return f"stopped container {self.cfg.container} (data kept in volume {self.cfg.volume})"

    def status(self) -> dict:
        container = self._our_container()
        if container is None:
            return {"provider": self.name, "running": False, "container": None}
        container.reload()
        health = container.attrs.get("State", {}).get("Health", {}).get("Status")
        return {
            "provider": self.name,
            "running": container.status == "running",
            "container": self.cfg.container,
            "status": container.status,
            "health": health,
            "image": (container.attrs.get("Config") or {}).get("Image", self.cfg.image),
            "volume": self.cfg.volume,
            "address": f"{self.pg.host}:{self.pg.port}",
        }

    def logs(self, lines: int) -> str:
        container = self._our_container()
        if container is None:
            raise UserError(f"no container named {self.cfg.container}; run `inv db.start`")
        return container.logs(tail=lines).decode("utf-8", "replace")

    def wipe(self) -> None:
        """Remove the container and its data volume."""
        container = self._our_container()
        if container is not None:
            container.remove(force=True)
        with contextlib.suppress(NotFound):
            self.client.volumes.get(self.cfg.volume).remove(force=True)

    # --- helpers ---------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            try:
                client = self._client_factory()
                client.ping()
                self._client = client
            except DockerException as exc:
                raise UserError(NO_ENGINE.format(reason=_first_line(exc))) from None
        return self._client

    def _our_container(self):
        """Our container, None if absent; a same-named container not made by us is refused."""
        try:
            container = self.client.containers.get(self.cfg.container)
        except NotFound:
            return None
        if container.labels.get(LABEL) != ROLE:
            raise UserError(
                f"a container named {self.cfg.container} exists but mlflow-ops did not create it; "
                "remove or rename it, or set postgres.docker.container"
            )
        return container

    def _create(self):
        image = self._ensure_image()
        try:
            return self.client.containers.run(
                image,
                name=self.cfg.container,
                detach=True,
                environment={
                    "POSTGRES_USER": self.pg.user,
                    "POSTGRES_PASSWORD": postgres_password(self.settings, generate=True),
                    "POSTGRES_DB": self.pg.database,
                },
                ports={"5432/tcp": (self.pg.host, self.pg.port)},
                volumes={self.cfg.volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
                labels={LABEL: ROLE},
                healthcheck={
                    # TCP: the image's init server (database creation) listens on the socket only.
                    "test": ["CMD-SHELL", f"pg_isready -h 127.0.0.1 -U {self.pg.user} -d {self.pg.database}"],
                    "interval": 1_000_000_000,
                    "timeout": 3_000_000_000,
                    "retries": 60,
                },
            )
        except APIError as exc:
            if exc.status_code == 409:  # created by a concurrent start: use it
                return self._our_container()
            raise UserError(f"Docker could not create {self.cfg.container}: {exc.explanation or exc}") from None

    def _ensure_image(self) -> str:
        """postgres.docker.image when it is here or pulls; where no registry answers, the stand-in
        built from Debian's PostgreSQL (engine.images.fallback)."""
        from tasks.libs.engine.images import postgres_image

        return postgres_image(self.settings, self.client, self.cfg.image, self.notes.append)

    def _wait_healthy(self, container) -> None:
        """Until Docker's health check says healthy; stop at once when it exits or turns unhealthy."""

        def probe() -> str | None:
            container.reload()
            if container.status in ("exited", "dead"):
                tail = container.logs(tail=15).decode("utf-8", "replace")
                raise UserError(
                    f"container {self.cfg.container} exited during start-up\n--- its last log lines ---\n{tail}"
                )
            health = container.attrs.get("State", {}).get("Health", {}).get("Status")
            if health == "unhealthy":
                raise UserError(f"container {self.cfg.container} is unhealthy (pg_isready fails); see `inv db.logs`")
            return None if health == "healthy" else f"health: {health or 'not reported'}"

        wait_ready(probe, timeout=self.pg.start_timeout, interval=0.5, what=f"container {self.cfg.container}")


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
