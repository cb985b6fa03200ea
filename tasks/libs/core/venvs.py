"""Private venvs: a folder made once with `python -m venv` and `pip install`, reused while it is whole.

Used by `db.upgrade --to VERSION` (another MLflow release) and by `inv bench` (stock MLflow as a
plain `pip install` has it). A venv is marked ready only after pip succeeded; a half-built one
(a killed or failed install) is removed and built again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import tail
from tasks.libs.core.settings import Settings

READY = ".mlflow-ops-ready"


def venvs_dir(settings: Settings) -> Path:
    """lifecycle.venvs_dir, else <state_dir>/venvs."""
    configured = settings.lifecycle.venvs_dir
    return Path(configured) if configured else settings.state_path / "venvs"


def ensure_venv(
    venv: Path,
    requirements: Sequence[str],
    *,
    log: Path,
    what: str,
    say: Callable[[str], None] = print,
    compile_bytecode: bool = False,
) -> str:
    """venv/bin/python, installing `requirements` into a new venv when it is missing or half-built.

    By default --no-compile: byte-compiling all of MLflow costs more than compiling what one command
    imports. compile_bytecode=True installs as a plain `pip install` does (a server whose workers
    all compile MLflow at once on a busy machine miss uvicorn's 5 s worker health check and are
    restarted, over and over).
    """
    python = venv / "bin" / "python"
    if (venv / READY).is_file() and python.is_file():
        return str(python)
    shutil.rmtree(venv, ignore_errors=True)  # half-built by a killed or failed run
    venv.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    say(f"installing {what} into {venv} (once; a minute or more) ...")
    for cmd in (
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            *([] if compile_bytecode else ["--no-compile"]),
            *requirements,
        ],
    ):
        with open(log, "a") as out:
            result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise UserError(f"cannot install {what}: {pip_reason(tail(log, 40))} (log: {log})")
    (venv / READY).write_text(" ".join(requirements) + "\n")
    return str(python)


def pip_freeze(python: str) -> list[str]:
    """`pip freeze` of the interpreter's environment, one requirement a line ([] if pip fails)."""
    result = subprocess.run(
        [python, "-m", "pip", "freeze", "--disable-pip-version-check", "--all"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return [line for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def pip_reason(text: str) -> str:
    """pip's own one-line reason (its last ERROR: line), e.g. 'No matching distribution found for ...'."""
    errors = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR:")]
    if errors:
        return errors[-1].removeprefix("ERROR: ")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception|error:|FAILED)", line):
            return line[:400]
    return lines[-1][:400] if lines else "no output"
