"""Building the MLflow image of a written project: the folder's Dockerfile on its base (or, where no
registry answers, on the Debian base), with the wheelhouse in the build context; cached by content."""

from __future__ import annotations

import re
from pathlib import Path

import docker

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.deploy.image import WHEELS
from tasks.libs.deploy.wheelhouse import ensure_wheelhouse
from tasks.libs.engine import images
from tasks.libs.engine.images import Say


def dockerfile_base(text: str) -> str:
    match = re.search(r"^ARG BASE=(\S+)$", text, re.MULTILINE)
    if not match:
        raise UserError(
            "this Dockerfile has no `ARG BASE=` line: write it again with inv deploy.compose or deploy.helm"
        )
    return match.group(1)


def choose_base(settings: Settings, client: docker.DockerClient, wanted: str, say: Say) -> str:
    """wanted when it is here or pulls; else the Debian base (engine.images.fallback: debian)."""
    problem = images.pull(client, wanted)
    if problem is None:
        return wanted
    if settings.engine.images.fallback != "debian":
        raise UserError(f"base image {wanted} is not here and could not be pulled ({problem}); set deploy.base_image")
    say(f"{wanted} could not be pulled ({problem}): building on a Debian base made with mmdebstrap instead")
    return images.debian_base(settings, client, say)


def mlflow_image(
    settings: Settings, directory: Path, tag: str, client: docker.DockerClient, say: Say, *, rebuild: bool = False
) -> bool:
    """Build tag from directory/Dockerfile and the wheelhouse; False when the cached image matches."""
    docker_file = directory / "Dockerfile"
    if not docker_file.is_file():
        raise UserError(f"no Dockerfile in {directory}: write the project with inv deploy.compose (or deploy.helm)")
    text = docker_file.read_text()
    base = choose_base(settings, client, dockerfile_base(text), say)
    wheels, wheels_key = ensure_wheelhouse(images.cache_dir(settings), say)
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))  # not the profile's name
    key = images.content_key(instructions, base, images.image_id(client, base) or "", wheels_key)
    if not rebuild and images.content_label(client, tag) == key:
        say(f"{tag} is up to date (cached)")
        return False
    say(f"building {tag} FROM {base} with the wheelhouse (a few minutes)")
    images.build(
        client,
        tag,
        {"Dockerfile": text.encode(), WHEELS: wheels},
        key=key,
        say=say,
        timeout=settings.engine.images.build_timeout,
        buildargs={"BASE": base},
    )
    return True
