"""Schema fingerprints (tables, columns, types, keys, indexes, constraints) and their differences.

Two uses. After a rehearsed upgrade the store must equal a fresh store made by the same MLflow
in the same dialect: that catches an upgrade that drops an index. And the "partly migrated"
detector: a fresh store *at the store's recorded revision*, built the way MLflow builds one
(initial tables, then alembic up to that revision), must not lack anything the store has;
names only, so one SQLite reference serves both dialects.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from tasks.libs.core.databases import engine_for

IGNORED_TABLES = {"alembic_version", "alembic_version_auth"}


def _type(column_type: Any) -> str:
    try:
        return str(column_type.compile(dialect=sqlite_dialect.dialect())).upper()
    except Exception:  # a type SQLite cannot render: its repr still compares
        return repr(column_type)


def fingerprint(engine: sa.Engine | sa.Connection, *, names_only: bool = False) -> dict[str, dict[str, Any]]:
    """{table: {...}} for every table but alembic's; names_only compares across dialects.

    Read with the inspector's get_multi_* calls: one catalog query per kind, not per table
    (per table took 10 s for two PostgreSQL stores here).
    """
    insp = sa.inspect(engine)
    tables = sorted(t for t in insp.get_table_names() if t not in IGNORED_TABLES)
    if not tables:
        return {}

    def multi(method: str) -> dict[str, Any]:
        try:
            found = getattr(insp, method)(filter_names=tables)
        except NotImplementedError:
            return {}
        return {name: value for (_, name), value in found.items()}

    columns, indexes = multi("get_multi_columns"), multi("get_multi_indexes")
    out: dict[str, dict[str, Any]] = {}
    for table in tables:
        cols = columns.get(table, [])
        # PostgreSQL also reports each UNIQUE constraint as an index (duplicates_constraint);
        # SQLite hides its sqlite_autoindex_*: drop those so the names compare across dialects.
        idx = [i for i in indexes.get(table, []) if not i.get("duplicates_constraint")]
        out[table] = {
            "columns": sorted(c["name"] for c in cols),
            "indexes": sorted(i["name"] for i in idx if i.get("name")),
        }
    if names_only:
        return out
    keys, fks = multi("get_multi_pk_constraint"), multi("get_multi_foreign_keys")
    uniques, checks = multi("get_multi_unique_constraints"), multi("get_multi_check_constraints")
    for table in tables:
        entry = out[table]
        entry["column_types"] = {
            c["name"]: [_type(c["type"]), bool(c["nullable"]), bool(c.get("computed"))] for c in columns.get(table, [])
        }
        entry["primary_key"] = list((keys.get(table) or {}).get("constrained_columns") or [])
        entry["foreign_keys"] = sorted(
            [
                ",".join(fk["constrained_columns"]),
                fk["referred_table"],
                ",".join(fk["referred_columns"]),
                (fk.get("options") or {}).get("ondelete", "") or "",
            ]
            for fk in fks.get(table, [])
        )
        entry["index_defs"] = sorted(
            [i["name"] or "", ",".join(c or "<expr>" for c in i["column_names"]), bool(i["unique"])]
            for i in indexes.get(table, [])
            if not i.get("duplicates_constraint")
        )
        entry["unique"] = sorted(",".join(u["column_names"]) for u in uniques.get(table, []))
        entry["checks"] = sorted(c.get("name") or "" for c in checks.get(table, []))
    return out


def diff(actual: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> list[str]:
    """One line per difference: what `actual` has or lacks against `expected` (a fresh store)."""
    lines = []
    for table in sorted(set(actual) | set(expected)):
        if table not in expected:
            lines.append(f"extra table {table}")
            continue
        if table not in actual:
            lines.append(f"missing table {table}")
            continue
        have, want = actual[table], expected[table]
        for key in want:
            if key in ("columns", "indexes"):
                noun = "column" if key == "columns" else "index"
                lines += [f"extra {noun} {table}.{x}" for x in sorted(set(have[key]) - set(want[key]))]
                lines += [f"missing {noun} {table}.{x}" for x in sorted(set(want[key]) - set(have[key]))]
            elif key == "column_types":
                for col in sorted(set(have[key]) & set(want[key])):
                    if have[key][col] != want[key][col]:
                        lines.append(f"column {table}.{col}: {have[key][col]} where a fresh store has {want[key][col]}")
            elif have.get(key) != want[key]:
                lines.append(f"{key} of {table}: {have.get(key)} where a fresh store has {want[key]}")
    return lines


def build_reference(revision: str, url: str) -> None:
    """A fresh store at `revision` (installed MLflow), made as MLflow makes one: initial tables, then alembic."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    with engine_for(url) as engine:
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(url)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)


def reference_names(revision: str, scratch_dir: Path) -> dict[str, dict[str, Any]]:
    """The names-only fingerprint of a fresh store at `revision` (installed MLflow), cached in scratch_dir.

    Building it replays every migration up to the revision (0.2-2 s, the older the slower); the
    answer depends only on the MLflow release and the revision, so it is kept as
    reference-<mlflow version>-<revision>.json for the next run.
    """
    import mlflow

    scratch_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cache = scratch_dir / f"reference-{mlflow.__version__}-{revision}.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(cache.read_text())
    with tempfile.TemporaryDirectory(dir=scratch_dir) as tmp:
        url = f"sqlite:///{Path(tmp) / 'reference.db'}"
        build_reference(revision, url)
        with engine_for(url) as reference:
            names = fingerprint(reference, names_only=True)
    tmp_cache = cache.with_suffix(".tmp")
    tmp_cache.write_text(json.dumps(names))
    os.replace(tmp_cache, cache)
    return names


def partly_migrated(engine: sa.Engine, revision: str, scratch_dir: Path) -> list[str]:
    """What the store has beyond a fresh store at its recorded revision (empty: nothing).

    Only valid for a revision the installed MLflow knows.
    """
    expected = reference_names(revision, scratch_dir)
    extra = [line for line in diff(fingerprint(engine, names_only=True), expected) if line.startswith("extra ")]
    if not extra:
        return []
    more = f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""
    return [
        f"the store has what a fresh store at its recorded revision {revision} lacks "
        f"({'; '.join(extra[:3])}{more}): an upgrade stopped part-way"
    ]
