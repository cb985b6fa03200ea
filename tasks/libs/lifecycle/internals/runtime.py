"""Which MLflow runs the migrations: the installed one, or another release in a private venv.

`db.upgrade --to VERSION` installs `mlflow[auth]==VERSION` into <venvs_dir>/mlflow-VERSION
(PyPI), so a user can rehearse the next release before changing the pin. The venv is built
once and marked ready only when MLflow imports from it; a half-built one is rebuilt.
MLflow's CLIs run as child processes in our process group (a kill of the tool stops them
too), with the store URI without its password and PGPASSWORD in their environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.libs.core import venvs
from tasks.libs.core.credentials import known_secrets
from tasks.libs.core.errors import UserError
from tasks.libs.core.redact import redact
from tasks.libs.core.settings import Settings
from tasks.libs.core.venvs import venvs_dir
from tasks.libs.lifecycle.internals.journal import journal_dir
from tasks.libs.lifecycle.internals.sqlite_files import stamp

VERSION = re.compile(r"^\d+\.\d+(\.\d+)?((a|b|rc)\d+)?$")

# What an MLflow tells about its migrations; runs inside any MLflow's Python (no project code).
INFO_CODE = r"""
import json, os
import mlflow
from alembic.config import Config
from alembic.script import ScriptDirectory
def chain(location):
    config = Config()
    config.set_main_option("script_location", location)
    script = ScriptDirectory.from_config(config)
    return [r.revision for r in script.walk_revisions()][::-1]
import mlflow.store.db_migrations as tracking
out = {"version": mlflow.__version__, "tracking": chain(os.path.dirname(tracking.__file__)), "auth": []}
try:
    from mlflow.server.auth.db import utils
    out["auth"] = chain(str(utils._get_alembic_dir()))
except Exception:
    pass
print("MLFLOW-OPS-INFO " + json.dumps(out))
"""


@dataclass
class Runtime:
    """An MLflow installation and what its migrations know."""

    python: str
    version: str
    revisions: list[str]  # base first, head last
    auth_revisions: list[str] = field(default_factory=list)
    private: bool = False

    @property
    def head(self) -> str:
        return self.revisions[-1]

    @property
    def auth_head(self) -> str | None:
        return self.auth_revisions[-1] if self.auth_revisions else None


def installed() -> Runtime:
    import mlflow

    from tasks.libs.store.revisions import auth_scripts, chain, tracking_scripts

    return Runtime(sys.executable, mlflow.__version__, chain(tracking_scripts()), chain(auth_scripts()))


def runtime_for(settings: Settings, version: str | None, *, say: Callable[[str], None] = print) -> Runtime:
    """The installed MLflow (version None or the installed one), else a private venv with that release."""
    mine = installed()
    if version is None or version == mine.version:
        return mine
    if not VERSION.match(version):
        raise UserError(f"--to {version!r} is not an MLflow version (e.g. 3.18.0)")
    python = ensure_venv(settings, version, say=say)
    result = subprocess.run([python, "-c", INFO_CODE], capture_output=True, text=True)
    line = next((x for x in result.stdout.splitlines() if x.startswith("MLFLOW-OPS-INFO ")), None)
    if result.returncode != 0 or line is None:
        raise UserError(f"MLflow {version} in {Path(python).parents[1]} does not import: {_last_line(result.stderr)}")
    info = json.loads(line.partition(" ")[2])
    return Runtime(python, info["version"], info["tracking"], info["auth"], private=True)


def ensure_venv(settings: Settings, version: str, *, say: Callable[[str], None] = print) -> str:
    """<venvs_dir>/mlflow-VERSION/bin/python, installing it when missing (PyPI, about a minute)."""
    requirements = [f"mlflow[auth]=={version}", "psycopg2-binary"]
    if int(version.split(".")[0]) < 3:
        requirements.append("sqlalchemy<2.1")  # MLflow 2.x declares sqlalchemy<3 but fails to import with 2.1
    return venvs.ensure_venv(
        venvs_dir(settings) / f"mlflow-{version}",
        requirements,
        log=logs_dir(settings) / f"venv-mlflow-{version}.log",
        what=f"MLflow {version}",
        say=say,
    )


def logs_dir(settings: Settings) -> Path:
    path = journal_dir(settings) / "logs"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass
class Child:
    """An MLflow CLI child running in the background (see start_mlflow)."""

    runtime: Runtime
    proc: subprocess.Popen
    log: Path
    what: str
    settings: Settings

    def finish(self) -> str:
        """Wait for it; its output, or UserError with the cause (its log is kept)."""
        returncode = self.proc.wait()
        text = redact(self.log.read_text(errors="replace"), known_secrets(self.settings))
        if returncode != 0:
            raise UserError(
                f"{self.what} with MLflow {self.runtime.version} failed (exit {returncode}): {_last_line(text)} (log: {self.log})"
            )
        return text


def start_mlflow(
    runtime: Runtime, args: list[str], *, settings: Settings, env: dict[str, str], what: str, module: str = "mlflow"
) -> Child:
    """Start `python -m <module> ARGS` (or `python ARGS` when module is "") of that MLflow, output to a log."""
    log = logs_dir(settings) / f"{what.replace(' ', '-')}-{stamp()}.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "PGPASSWORD"))}
    child_env.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    command = [runtime.python, "-m", module, *args] if module else [runtime.python, *args]
    with os.fdopen(fd, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env)
    return Child(runtime, proc, log, what, settings)


def run_mlflow(
    runtime: Runtime, args: list[str], *, settings: Settings, env: dict[str, str], what: str, module: str = "mlflow"
) -> str:
    """start_mlflow, then wait for it: its output, or UserError with the cause."""
    return start_mlflow(runtime, args, settings=settings, env=env, what=what, module=module).finish()


def db_upgrade(runtime: Runtime, uri: str, *, settings: Settings, env: dict[str, str]) -> None:
    """`mlflow db upgrade URI` (the URI without a password; libpq reads PGPASSWORD from env)."""
    run_mlflow(runtime, ["db", "upgrade", uri], settings=settings, env=env, what="mlflow db upgrade")


# A fresh store as MLflow makes one (initial tables, then every migration): what 3.x's `db upgrade`
# does to an empty database; 2.x's `db upgrade` fails there ("no such table: metrics").
FRESH_CODE = """
import os
from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine_with_retry
_initialize_tables(create_sqlalchemy_engine_with_retry(os.environ["MLFLOW_OPS_STORE_URI"]))
"""


def start_fresh_store(runtime: Runtime, uri: str, *, settings: Settings, env: dict[str, str]) -> Child:
    """Start making a fresh store with that MLflow at `uri` (an empty database; no password in it: env has PGPASSWORD)."""
    return start_mlflow(
        runtime,
        ["-c", FRESH_CODE],
        settings=settings,
        env={**env, "MLFLOW_OPS_STORE_URI": uri},
        what="fresh store",
        module="",
    )


def auth_db_upgrade(runtime: Runtime, path: Path, *, settings: Settings) -> None:
    """The basic-auth database's own migrations (it is always a SQLite file of ours)."""
    run_mlflow(
        runtime,
        ["db", "upgrade", "--url", f"sqlite:///{path}"],
        settings=settings,
        env={},
        what="auth db upgrade",
        module="mlflow.server.auth",
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception|error:|FAILED)", line):
            return line[:400]
    return lines[-1][:400] if lines else "no output"
