"""Where a store says its artifacts are, and `--rewrite-artifact-root OLD=NEW`.

Our own server stores relative `mlflow-artifacts:/<exp>/...` URIs, so a move between our
backends needs no rewrite; a store written by a plain `mlflow server` or by clients with a
file-system path does. The rewrite is a prefix replace (compared with substr(), not LIKE:
paths may hold % and _), counted first, refused before anything is written when a rewritten
value would overflow its VARCHAR. datasets.dataset_source says where *data* came from: left alone.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from tasks.libs.core.errors import UserError

# Every column (MLflow 3.17) that holds an artifact URI: (table, column, extra condition).
ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location", None),
    ("runs", "artifact_uri", None),
    ("logged_models", "artifact_location", None),
    ("model_versions", "source", None),
    ("model_versions", "storage_location", None),
    ("workspaces", "default_artifact_root", None),
    ("trace_tags", "value", "key = 'mlflow.artifactLocation'"),
)


def parse_rewrite(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise UserError(f"--rewrite-artifact-root {text!r}: write OLD=NEW, e.g. /srv/mlruns=s3://bucket/mlruns")
    if old == new:
        raise UserError("--rewrite-artifact-root: OLD and NEW are the same")
    return old, new


def artifact_roots(conn: sa.Connection) -> dict[str, int]:
    """The distinct experiment artifact locations' roots (scheme + path without the experiment id), counted."""
    found: Counter[str] = Counter()
    if not sa.inspect(conn).has_table("experiments"):
        return {}
    for (location,) in conn.execute(sa.text("SELECT artifact_location FROM experiments")):
        if location:
            root, _, last = str(location).rstrip("/").rpartition("/")
            found[root if last.isdigit() and root else str(location)] += 1
    return dict(found.most_common())


def rewrite_artifact_root(conn: sa.Connection, old: str, new: str, *, dry_run: bool) -> dict[str, int]:
    """Replace the prefix old by new in every artifact column; {table.column: rows}. Both dialects."""
    tables = [t for t, _, _ in ARTIFACT_COLUMNS if sa.inspect(conn).has_table(t)]
    metadata = sa.MetaData()
    metadata.reflect(conn, only=sorted(set(tables)))
    counts: dict[str, int] = {}
    too_long, plan = [], []
    for table, column, extra in ARTIFACT_COLUMNS:
        if table not in metadata.tables or column not in metadata.tables[table].c:
            continue
        where = f'substr("{column}", 1, :n) = :old' + (f" AND {extra}" if extra else "")
        params: dict[str, Any] = {"n": len(old), "old": old, "new": new}
        n, longest = conn.execute(
            sa.text(f'SELECT count(*), max(length("{column}")) FROM "{table}" WHERE {where}'), params
        ).one()
        counts[f"{table}.{column}"] = int(n)
        limit = getattr(metadata.tables[table].c[column].type, "length", None)
        if n and limit and longest - len(old) + len(new) > limit:
            too_long.append(f"{table}.{column} up to {longest - len(old) + len(new)} characters, VARCHAR({limit})")
        plan.append((table, column, where, params, n))
    if too_long:
        raise UserError(f"the new artifact root is too long ({'; '.join(too_long)}); nothing was rewritten")
    if not dry_run:
        for table, column, where, params, n in plan:
            if n:
                conn.execute(
                    sa.text(f'UPDATE "{table}" SET "{column}" = :new || substr("{column}", :n + 1) WHERE {where}'),
                    params,
                )
    return counts


def rewritten_columns(counts: dict[str, int]) -> dict[str, set[str]]:
    """{table: columns} that a rewrite changed (to leave them out of the verbatim comparison)."""
    out: dict[str, set[str]] = {}
    for key, n in counts.items():
        if n:
            table, _, column = key.partition(".")
            out.setdefault(table, set()).add(column)
    return out
