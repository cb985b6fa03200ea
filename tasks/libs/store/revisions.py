"""Where a store's schema stands against an MLflow's migrations: head, behind, newer, partly migrated.

MLflow keeps the tracking migrations in `mlflow/store/db_migrations` (version table
`alembic_version`) and the basic-auth ones in `mlflow/server/auth/db/migrations` (version table
`alembic_version_auth`). A store at a revision these scripts do not know was written by a newer
MLflow: `mlflow db upgrade` then fails with "Can't locate revision" (and an older MLflow's own
start-up message wrongly asks for an upgrade), so we name both revisions instead.
`preflight` works on plain facts (tables, version rows) so it serves any dialect and any
MLflow (the installed one or a private venv's, see runtime.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

TRACKING_VERSION_TABLE = "alembic_version"
AUTH_VERSION_TABLE = "alembic_version_auth"


def _scripts(location: str):
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", location)
    return ScriptDirectory.from_config(config)


def tracking_scripts():
    import mlflow.store.db_migrations as migrations

    return _scripts(os.path.dirname(migrations.__file__))


def auth_scripts():
    with warnings.catch_warnings():  # importing mlflow.server warns about starlette's WSGI middleware
        warnings.simplefilter("ignore")
        from mlflow.server.auth.db import utils

    return _scripts(str(utils._get_alembic_dir()))


def chain(scripts) -> list[str]:
    """Every revision, base first, head last."""
    return [r.revision for r in scripts.walk_revisions()][::-1]


def single_head(scripts) -> str:
    heads = scripts.get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"expected one alembic head in {scripts.dir}, found {heads}")
    return heads[0]


def is_known(scripts, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown id
        return False


def stored_revisions(engine_or_conn, table: str = TRACKING_VERSION_TABLE) -> list[str] | None:
    """The rows of the version table; None when the table does not exist."""
    if not sa.inspect(engine_or_conn).has_table(table):
        return None
    if isinstance(engine_or_conn, sa.Engine):
        with engine_or_conn.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(f'SELECT version_num FROM "{table}"'))]
    return [r[0] for r in engine_or_conn.execute(sa.text(f'SELECT version_num FROM "{table}"'))]


@dataclass
class Preflight:
    """empty | head | behind | newer | unversioned | branched | partial."""

    state: str
    stored: str | None
    head: str
    mlflow_version: str
    pending: list[str] = field(default_factory=list)  # what an upgrade would apply, in order
    problems: list[str] = field(default_factory=list)

    @property
    def upgradable(self) -> bool:
        return self.state == "behind"

    def describe(self) -> str:
        if self.state == "head":
            return f"at {self.head}, the head of MLflow {self.mlflow_version}"
        if self.state == "behind":
            return f"at {self.stored}, {len(self.pending)} revision(s) behind MLflow {self.mlflow_version}'s head {self.head}"
        if self.state == "empty":
            return "an empty database (no MLflow tables)"
        return f"{self.state}: {self.problems[0] if self.problems else self.stored}"


def preflight(
    tables: list[str],
    stored: list[str] | None,
    *,
    head: str,
    known: list[str],
    mlflow_version: str,
    version_table: str = TRACKING_VERSION_TABLE,
    partial_check: Callable[[str], list[str]] | None = None,
) -> Preflight:
    """Classify a store from its tables and version rows against a chain of known revisions.

    partial_check(revision) lists what the store has beyond a fresh store at that revision
    (schema_compare.partly_migrated); it runs only for a known revision behind the head.
    """
    found = Preflight("empty", None, head, mlflow_version)
    if not stored:
        others = [t for t in tables if not t.startswith("alembic_")]
        if not others:
            return found
        found.state = "unversioned"
        found.problems = [
            f"{len(others)} tables but no {version_table} row: not a store an MLflow upgrade can continue"
        ]
        return found
    if len(stored) > 1:
        found.state, found.stored = "branched", ",".join(stored)
        found.problems = [f"{version_table} holds {len(stored)} revisions ({', '.join(stored)}); MLflow keeps one"]
        return found
    found.stored = stored[0]
    if found.stored not in known:
        found.state = "newer"
        found.problems = [
            f"the store is at revision {found.stored}, which MLflow {mlflow_version} does not know (its head is "
            f"{head}): a newer MLflow upgraded it; run that MLflow (or restore a backup taken before that upgrade)"
        ]
        return found
    leftovers = [t for t in tables if t.startswith("_alembic_tmp_")]
    found.problems = [f"table {t} is left over from an interrupted batch migration" for t in leftovers]
    found.pending = known[known.index(found.stored) + 1 :]
    if found.stored != head and partial_check is not None:
        found.problems += partial_check(found.stored)
    if found.problems:
        found.state = "partial"
    else:
        found.state = "head" if found.stored == head else "behind"
    return found
