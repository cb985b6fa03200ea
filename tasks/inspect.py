"""`inspect` collection: what is inside the MLflow store, read-only, on SQLite or PostgreSQL."""

from __future__ import annotations

from invoke import task

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.artifacts.s3 import where_artifacts_are
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.errors import UserError
from tasks.libs.store.inspection import DEFAULT_STALE_HOURS, SECTIONS, inspect_store, section_errors
from tasks.libs.store.reader import DEFAULT_LIMIT
from tasks.libs.store.report import FORMATS, render

COMMON = {
    "uri": "store URI to read instead of the configured one (sqlite:////abs/mlflow.db or postgresql+psycopg2://...)",
    "backend": "sqlite or postgres: which configured store to read",
    "format": f"output format: {' | '.join(FORMATS)} (default table)",
    "limit": f"at most this many runs/rows per list (default {DEFAULT_LIMIT}); totals always count all",
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
}
SCHEMA_HELP = "also show every table's columns and keys (the CREATE statement too in json on SQLite)"
STALE_HELP = f"a RUNNING run older than this many hours counts as stale (default {DEFAULT_STALE_HOURS:g})"
ARTIFACTS_HELP = "artifact directory the server writes to (default: <state_dir>/artifacts, or the configured S3 bucket)"


def _show(sections, *, uri, backend, format, limit, profile, config, schema=False, stale_hours=None, artifacts=None):
    """Load settings, inspect the store read-only, print the report; user errors end in one line."""
    with user_errors():
        fmt = format or "table"
        if fmt not in FORMATS:
            raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
        settings = settings_from(profile, config, backend=backend).settings
        report = inspect_store(
            uri or backend_store_uri(settings, reveal=True),
            artifacts or where_artifacts_are(settings),
            sections=sections,
            with_schema=bool(schema),
            stale_hours=_number("--stale-hours", stale_hours, DEFAULT_STALE_HOURS, float),
            limit=int(_number("--limit", limit, DEFAULT_LIMIT, int)),
        )
        print(render(report, fmt), end="")
        failed = section_errors(report)
        if failed:
            raise UserError(
                f"{len(failed)} section(s) could not be read ({'; '.join(failed)}); "
                "if the schema section says so, run `mlflow db upgrade`"
            )


def _number(flag, value, default, kind):
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise UserError(f"{flag} {value!r} is not a number") from None
    if number < 0:
        raise UserError(f"{flag} must not be negative")
    return number


@task(help={**COMMON, "schema": SCHEMA_HELP, "stale_hours": STALE_HELP, "artifacts": ARTIFACTS_HELP})
def summary(
    c,
    uri=None,
    backend=None,
    format=None,
    schema=False,
    stale_hours=None,
    artifacts=None,
    limit=None,
    profile=None,
    config=None,
):
    """Every section: tables, schema revision, integrity, workspaces, runs, metrics, registry, sizes."""
    _show(
        SECTIONS,
        uri=uri,
        backend=backend,
        format=format,
        schema=schema,
        stale_hours=stale_hours,
        artifacts=artifacts,
        limit=limit,
        profile=profile,
        config=config,
    )


@task(help={**COMMON, "schema": SCHEMA_HELP})
def tables(c, uri=None, backend=None, format=None, schema=False, limit=None, profile=None, config=None):
    """Every table with its row count (--schema: columns and keys too)."""
    _show(
        ["tables"], uri=uri, backend=backend, format=format, schema=schema, limit=limit, profile=profile, config=config
    )


@task(help=COMMON)
def schema(c, uri=None, backend=None, format=None, limit=None, profile=None, config=None):
    """The store's alembic revision against the installed MLflow's head."""
    _show(["schema"], uri=uri, backend=backend, format=format, limit=limit, profile=profile, config=config)


@task(help=COMMON)
def integrity(c, uri=None, backend=None, format=None, limit=None, profile=None, config=None):
    """Orphan rows, unvalidated keys and invalid indexes (PostgreSQL), integrity_check (SQLite)."""
    _show(["integrity"], uri=uri, backend=backend, format=format, limit=limit, profile=profile, config=config)


@task(help=COMMON)
def workspaces(c, uri=None, backend=None, format=None, limit=None, profile=None, config=None):
    """Per workspace: experiments, runs, traces, registered models, versions and prompts."""
    _show(["workspaces"], uri=uri, backend=backend, format=format, limit=limit, profile=profile, config=config)


@task(help={**COMMON, "stale_hours": STALE_HELP})
def runs(c, uri=None, backend=None, format=None, stale_hours=None, limit=None, profile=None, config=None):
    """Run counts by status per experiment, stale RUNNING runs, runs without an end time."""
    _show(
        ["runs"],
        uri=uri,
        backend=backend,
        format=format,
        stale_hours=stale_hours,
        limit=limit,
        profile=profile,
        config=config,
    )


@task(help=COMMON)
def metrics(c, uri=None, backend=None, format=None, limit=None, profile=None, config=None):
    """Per run and key: first and last value, the change, metric rows and steps."""
    _show(["metrics"], uri=uri, backend=backend, format=format, limit=limit, profile=profile, config=config)


@task(help=COMMON)
def registry(c, uri=None, backend=None, format=None, limit=None, profile=None, config=None):
    """Registered models, their versions and aliases."""
    _show(["registry"], uri=uri, backend=backend, format=format, limit=limit, profile=profile, config=config)


@task(help={**COMMON, "artifacts": ARTIFACTS_HELP})
def sizes(c, uri=None, backend=None, format=None, artifacts=None, limit=None, profile=None, config=None):
    """Store size (SQLite file + WAL, or per table) and the artifact tree, orphans included."""
    _show(
        ["sizes"],
        uri=uri,
        backend=backend,
        format=format,
        artifacts=artifacts,
        limit=limit,
        profile=profile,
        config=config,
    )
