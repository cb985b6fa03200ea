"""The wheelhouse an image installs from: the image's packages pinned to the versions installed here.

The pins are the closure of the Dockerfile's packages over this venv's installed distributions
(requirements and extras with their markers evaluated for the image's Python, 3.11 on Linux): the
image runs exactly the versions the tool and its tests run. `pip download --no-deps` then fetches
those wheels (from pip's cache after `pip install -e .`). Cached under <engine dir>/cache, keyed
by the pinned list and the target: a second build downloads nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tasks.libs.core.errors import UserError
from tasks.libs.deploy.image import IMAGE_PACKAGES, PYTHON

TARGET_MARKERS = {
    "python_version": PYTHON,
    "python_full_version": f"{PYTHON}.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def pinned_closure(requirements: tuple[str, ...] = IMAGE_PACKAGES) -> list[str] | None:
    """name==version for every distribution the requirements need, from this venv; None when one
    is not installed here (then pip resolves instead)."""
    markers = {**TARGET_MARKERS, "platform_machine": platform.machine()}
    versions: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            return None
        if dist.version not in req.specifier:
            return None
        extras = set(req.extras)
        if name in versions and extras <= extras_seen[name]:
            continue
        extras_seen[name] = extras_seen.get(name, set()) | extras
        versions[name] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            wanted = [""] + sorted(extras_seen[name])
            if sub.marker is None or any(sub.marker.evaluate({**markers, "extra": e}) for e in wanted):
                todo.append(sub)
    return [f"{name}=={versions[name]}" for name in sorted(versions)]


def _target_flags() -> list[str]:
    """pip's target when this interpreter is not the image's (CPython 3.11 on Linux, this machine's arch)."""
    here = (sys.implementation.name, f"{sys.version_info[0]}.{sys.version_info[1]}", sys.platform)
    if here == ("cpython", PYTHON, "linux"):
        return []
    arch = platform.machine()
    tag = PYTHON.replace(".", "")
    flags = ["--python-version", PYTHON, "--implementation", "cp", "--abi", f"cp{tag}"]
    for minor in (36, 35, 34, 31, 28, 27, 24, 17, 12, 5):
        flags += ["--platform", f"manylinux_2_{minor}_{arch}"]
    return flags + ["--platform", f"manylinux2014_{arch}", "--platform", f"manylinux1_{arch}"]


def ensure_wheelhouse(cache: Path, say: Callable[[str], None]) -> tuple[Path, str]:
    """(folder of wheels, content key): made once per pinned list and target."""
    pins = pinned_closure()
    flags = _target_flags()
    spec = "\n".join(pins if pins is not None else list(IMAGE_PACKAGES)) + "\n"
    key = hashlib.sha256((spec + " ".join(flags)).encode()).hexdigest()[:16]
    folder = cache / f"wheels-{key}"
    if (folder / "requirements.txt").is_file():
        return folder, key
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = cache / f"wheels-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    (partial / "pins.txt").write_text(spec)
    how = f"{len(pins)} pinned wheels" if pins is not None else "the image's packages (resolved by pip)"
    say(f"wheelhouse: downloading {how} into {folder}")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(partial)]
    command += [*flags, *(["--no-deps"] if pins is not None else []), "-r", str(partial / "pins.txt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        raise UserError(f"pip could not make the wheelhouse: {(errors or ['no output'])[-1].strip()}")
    (partial / "pins.txt").rename(partial / "requirements.txt")
    partial.rename(folder)
    return folder, key
