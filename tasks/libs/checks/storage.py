"""Check 9: the store underneath the server is sound, and artifacts are on disk where it says.

The database is read through the store reader (tasks.libs.store.reader), the same one
`inv inspect` uses: read-only, SQLite through a mode=ro URI, PostgreSQL in a read-only
transaction.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from tasks.libs.checks.results import CheckFailed, CheckSkipped
from tasks.libs.checks.runner import CheckContext, describe_error
from tasks.libs.core.errors import UserError
from tasks.libs.store.artifacts import local_artifact_path
from tasks.libs.store.inspection import integrity, integrity_problems
from tasks.libs.store.reader import UnsupportedStore, first_line, open_store


def check_storage(ctx: CheckContext) -> str:
    passed, skipped, problems = [], [], []
    for label, part in (("database", _database_part), ("artifact files", _artifacts_part)):
        try:
            passed.append(part(ctx))
        except CheckSkipped as exc:
            skipped.append(str(exc))
        except CheckFailed as exc:
            problems.append(str(exc))
        except Exception as exc:  # e.g. the server cannot list the run's artifacts any more
            problems.append(f"{label}: {describe_error(exc, ctx.url)}")
    if problems:
        raise CheckFailed("; ".join(problems))
    if not passed:
        raise CheckSkipped("; ".join(skipped))
    return "; ".join(passed + [f"not checked: {s}" for s in skipped])


def _database_part(ctx: CheckContext) -> str:
    if ctx.store_uri is None:
        raise CheckSkipped(f"database: {ctx.store_skip_reason or 'no backend store URI given'}")
    return check_database(ctx.store_uri)


def check_database(store_uri: str) -> str:
    """The store's integrity and orphan rows (PostgreSQL: also unvalidated keys, invalid indexes)."""
    try:
        with open_store(store_uri) as store:
            try:
                found = integrity(store)
                tables = len(store.tables())
            except SQLAlchemyError as exc:
                raise CheckFailed(f"{store.label}: {first_line(exc)}") from None
            label, sqlite_path = store.label, store.sqlite_path
    except UnsupportedStore as exc:
        raise CheckSkipped(f"database: {exc}") from None
    except UserError as exc:  # missing file, not a database, not an MLflow store, cannot connect
        raise CheckFailed(str(exc)) from None
    problems = integrity_problems(found)
    if problems:
        raise CheckFailed(f"{label}: " + "; ".join(problems))
    if sqlite_path is not None:
        return f"SQLite {sqlite_path.name}: integrity ok, no orphan rows in {tables} tables"
    return f"{label}: no orphan rows across {found['relationships_checked']} foreign keys in {tables} tables"


def _artifacts_part(ctx: CheckContext) -> str:
    from mlflow.store.artifact.artifact_repository_registry import (
        get_artifact_repository,
    )

    if ctx.run_id is None:
        raise CheckSkipped("artifact files: needs experiment (no run was created)")
    roots = {"run": ctx.client.get_run(ctx.run_id).info.artifact_uri}
    if ctx.model_info is not None:
        roots["model"] = ctx.client.get_logged_model(ctx.model_info.model_id).artifact_location
    checked, problems = 0, []
    for what, uri in roots.items():
        root = local_artifact_path(uri, ctx.artifacts_dir)
        if root is None:
            raise CheckSkipped(f"artifact files: {uri} is not on a local disk we know (give artifacts_dir)")
        for path, size in _listed_files(get_artifact_repository(uri)):
            on_disk = root / path
            checked += 1
            if not on_disk.is_file():
                problems.append(f"{what} artifact {path} listed by the server but missing at {on_disk}")
            elif size is not None and on_disk.stat().st_size != size:
                problems.append(f"{what} artifact {path}: {on_disk.stat().st_size} bytes on disk, server lists {size}")
    if problems:
        raise CheckFailed("; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    if checked == 0:
        raise CheckSkipped("artifact files: the check run has no artifacts (artifact and model checks failed)")
    return f"{checked} artifact files on disk under {ctx.artifacts_dir or root} with the listed sizes"


def _listed_files(repo, path: str = ""):
    for info in repo.list_artifacts(path or None):
        if info.is_dir:
            yield from _listed_files(repo, info.path)
        else:
            yield info.path, info.file_size
