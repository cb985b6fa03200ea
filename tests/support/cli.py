"""The CLI as a user runs it (`python -m invoke ...`), hermetic: a state dir, a config file and
free ports of the test's own, never the user's MLFLOW_OPS_* settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import PROJECT_ROOT


def hermetic_env(state_dir: Path, **values: str) -> dict[str, str]:
    """os.environ without any MLFLOW_OPS_* of the user's, plus a state dir, a config file and
    free ports of the test's own; values add MLFLOW_OPS_<KEY> variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_OPS_")}
    config = state_dir / "hermetic.yaml"
    if not config.exists():
        config.write_text(
            f"# written by the fault tests\nserver: {{port: {free_port()}}}\n"
            f"postgres: {{port: {free_port()}, provider: local}}\n"
        )
    env.update(
        {
            "MLFLOW_OPS_STATE_DIR": str(state_dir),
            "MLFLOW_OPS_CONFIG": str(config),
            "MLFLOW_OPS_SERVER__START_TIMEOUT": "300",
            "MLFLOW_OPS_POSTGRES__START_TIMEOUT": "120",
        }
    )
    env.update({f"MLFLOW_OPS_{k.upper()}": str(v) for k, v in values.items()})
    return env


def inv(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    """`python -m invoke ARGS` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def inv_popen(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def processes_in(folder: Path) -> list[psutil.Process]:
    """Live processes whose working directory is folder or below (the server runs there)."""
    found = []
    for proc in psutil.process_iter():
        try:
            cwd = proc.cwd()
            if proc.status() != psutil.STATUS_ZOMBIE and (cwd == str(folder) or cwd.startswith(f"{folder}/")):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def pid_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.pid"))


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
