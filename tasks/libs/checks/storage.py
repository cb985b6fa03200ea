"""Check 11: the store underneath the server is sound, and artifacts are on disk where it says.

The database is read through the store reader (tasks.libs.store.reader), the same one
`inv inspect` uses: read-only, SQLite through a mode=ro URI, PostgreSQL in a read-only
transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tasks.libs.artifacts.location import client_s3_env
from tasks.libs.artifacts.s3 import BucketView, where_artifacts_are
from tasks.libs.checks.context import CheckContext
from tasks.libs.checks.failures import describe_error
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.reporting.records import CheckFailed, CheckSkipped
from tasks.libs.store.integrity import integrity, integrity_problems
from tasks.libs.store.reader import UnsupportedStore, first_line, open_store
from tasks.libs.store.usage import local_artifact_path


def storage_arguments(settings: Settings) -> dict[str, Any]:
    """run_checks' keywords for where the configured server keeps artifacts: a folder or a bucket,
    and what a client needs to reach them (direct mode: the bucket's endpoint and credentials)."""
    where = where_artifacts_are(settings)
    if isinstance(where, BucketView):
        return {"artifacts_dir": None, "bucket": where, "client_env": client_s3_env(settings)}
    return {"artifacts_dir": where, "bucket": None, "client_env": {}}


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
    if ctx.bucket is not None:
        return _bucket_part(ctx, roots)
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


def _bucket_part(ctx: CheckContext, roots: dict[str, str]) -> str:
    """S3: every file the server lists is an object in the bucket, of the listed size."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    bucket = ctx.bucket
    checked, problems = 0, []
    for what, uri in roots.items():
        root = bucket.key_for(uri)
        if root is None:
            raise CheckFailed(f"{what} artifacts at {uri} are not in {bucket.uri}, where the server should put them")
        stored = dict(bucket.objects(root))
        if what == "model" and f"{root}/MLmodel" not in stored:
            # the server lists from the same bucket, so only the store says this object must exist
            problems.append(
                f"the logged model has no MLmodel object at s3://{bucket.bucket}/{root} (it cannot be loaded)"
            )
        for path, size in _listed_files(get_artifact_repository(uri)):
            checked += 1
            key = f"{root}/{path}"
            if key not in stored:
                problems.append(f"{what} artifact {path} listed by the server but no object s3://{bucket.bucket}/{key}")
            elif size is not None and stored[key] != size:
                problems.append(f"{what} artifact {path}: object has {stored[key]} bytes, server lists {size}")
    if problems:
        raise CheckFailed("; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    if checked == 0:
        raise CheckSkipped("artifact files: the check run has no artifacts (artifact and model checks failed)")
    usage = bucket.usage()
    return (
        f"{checked} artifact objects in {bucket.uri} with the listed sizes "
        f"(the bucket holds {usage['objects']} objects, {usage['bytes']} bytes under the prefix)"
    )


def _listed_files(repo, path: str = ""):
    for info in repo.list_artifacts(path or None):
        if info.is_dir:
            yield from _listed_files(repo, info.path)
        else:
            yield info.path, info.file_size
