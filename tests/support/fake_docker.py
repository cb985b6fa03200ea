"""A stand-in for docker-py's client that fails the way docker-py fails.

Only the calls the docker provider makes exist; every error is docker-py's own class,
built the way docker-py builds it (APIError carries an HTTP response with its status).
"""

from __future__ import annotations

import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound


def _response(status: int) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    return resp


def no_engine():
    """What docker.from_env() raises on a machine with the client but no engine."""
    raise DockerException(
        "Error while fetching server API version: ('Connection aborted.', "
        "FileNotFoundError(2, 'No such file or directory'))"
    )


class FakeContainer:
    def __init__(self, engine, name, image, labels, health="healthy", exits=False, **kwargs):
        self.engine, self.name, self.image, self.labels = engine, name, image, labels
        self.kwargs = kwargs
        self.status = "created"
        self.attrs: dict = {"State": {}}
        self._health, self._exits = health, exits

    def start(self):
        self.status = "exited" if self._exits else "running"
        self.attrs = {"State": {"Status": self.status, "Health": {"Status": self._health}}}

    def reload(self):
        if self.name not in self.engine.containers_by_name:
            raise NotFound(f"No such container: {self.name}", response=_response(404))

    def stop(self, timeout=10):
        self.status = "exited"
        self.engine.calls.append(("stop", self.name))

    def remove(self, force=False):
        if self.status == "running" and not force:
            raise APIError("You cannot remove a running container", response=_response(409))
        del self.engine.containers_by_name[self.name]

    def logs(self, tail="all"):
        return b"FATAL:  data directory has wrong ownership\n" if self._exits else b"ready\n"


class FakeImage:
    def __init__(self, name):
        self.id, self.tags, self.labels = f"sha256:{name}", [name], {}


class FakeVolume:
    def __init__(self, engine, name):
        self.engine, self.name = engine, name

    def remove(self, force=False):
        self.engine.volumes_by_name.discard(self.name)


class FakeDocker:
    """The engine and the client in one: docker.from_env() returns it."""

    def __init__(self, images=(), pullable=(), exits=False, health="healthy"):
        self.images_present = set(images)
        self.pullable = set(pullable)
        self.containers_by_name: dict[str, FakeContainer] = {}
        self.volumes_by_name: set[str] = set()
        self.calls: list[tuple] = []
        self.exits, self.health = exits, health
        self.race_on_create = False
        self.containers, self.images, self.volumes = _Containers(self), _Images(self), _Volumes(self)

    def ping(self):
        return True

    def add_container(self, name, labels, status="exited"):
        container = FakeContainer(self, name, "postgres:15", labels, health=self.health)
        self.containers_by_name[name] = container
        if status == "running":
            container.start()
        return container


class _Containers:
    def __init__(self, engine):
        self.engine = engine

    def get(self, name):
        try:
            return self.engine.containers_by_name[name]
        except KeyError:
            raise NotFound(
                f'404 Client Error: Not Found ("No such container: {name}")',
                response=_response(404),
                explanation=f"No such container: {name}",
            ) from None

    def run(self, image, name=None, detach=False, labels=None, volumes=None, **kwargs):
        engine = self.engine
        engine.calls.append(("run", image, name))
        if image not in engine.images_present:
            raise ImageNotFound(f"No such image: {image}", response=_response(404))
        if engine.race_on_create:
            engine.add_container(name, labels, status="running")
        if name in engine.containers_by_name:
            raise APIError(
                f'409 Client Error: Conflict ("Conflict. The container name "/{name}" is already in use")',
                response=_response(409),
                explanation=f'The container name "/{name}" is already in use',
            )
        container = FakeContainer(
            engine, name, image, labels or {}, health=engine.health, exits=engine.exits, volumes=volumes, **kwargs
        )
        engine.containers_by_name[name] = container
        engine.volumes_by_name.update(volumes or {})
        container.start()
        return container


class _Images:
    def __init__(self, engine):
        self.engine = engine

    def get(self, name):
        if name not in self.engine.images_present:
            raise ImageNotFound(
                f'404 Client Error: Not Found ("No such image: {name}")',
                response=_response(404),
                explanation=f"No such image: {name}",
            )
        return FakeImage(name)

    def pull(self, repository, tag=None, **kwargs):
        self.engine.calls.append(("pull", repository))
        if repository not in self.engine.pullable:
            raise NotFound(
                f'404 Client Error: Not Found ("pull access denied for {repository}, repository '
                "does not exist or may require 'docker login'\")",
                response=_response(404),
                explanation=f"pull access denied for {repository}, repository does not exist",
            )
        self.engine.images_present.add(repository)
        return repository


class _Volumes:
    def __init__(self, engine):
        self.engine = engine

    def get(self, name):
        if name not in self.engine.volumes_by_name:
            raise NotFound(f"get {name}: no such volume", response=_response(404))
        return FakeVolume(self.engine, name)
