"""Row snapshots of a store: per table a count and a content hash, the same on SQLite and PostgreSQL.

MLflow's own `tests/db/check_migration.py` method, without pandas: snapshot the tables, upgrade,
then every row of every column that existed before must still be there unchanged (columns a
migration adds are ignored). The same snapshot verifies a SQLite -> PostgreSQL copy.

Rows stream in primary-key order (text keys compared byte-wise on both dialects: PostgreSQL's
"C" collation, SQLite's BINARY), so memory stays flat on big tables; `norm` maps what the two
drivers return differently (booleans, bytes, JSON, dates, NaN) to one form before hashing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

# Every row of these must survive an upgrade unchanged (tracking and registry tables, and the
# workspaces with the workspace column of each root table).
CORE_TABLES = (
    "workspaces",
    "experiments",
    "experiment_tags",
    "runs",
    "params",
    "metrics",
    "latest_metrics",
    "tags",
    "registered_models",
    "registered_model_tags",
    "model_versions",
    "model_version_tags",
    "registered_model_aliases",
    "datasets",
    "inputs",
    "input_tags",
    "logged_models",
    "logged_model_params",
    "logged_model_tags",
    "logged_model_metrics",
)
# Migrations rewrite trace rows on purpose (3.17 moves the mlflow.traceName tag into
# trace_info.trace_name, drops token keys from trace_request_metadata, drops
# spans.dimension_attributes): only their keys must survive.
KEY_ONLY_TABLES = {
    "trace_info": ["request_id"],
    "spans": ["trace_id", "span_id"],
    "assessments": ["assessment_id"],
}
# The auth database: users and the legacy permission tables (kept by the RBAC migrations).
AUTH_TABLES = ("users", "experiment_permissions", "registered_model_permissions")
KEEP_ROWS = 20_000  # rows kept per table to name the first difference


def norm(value: Any) -> Any:
    """One comparable form for a value from either driver."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return repr(value)


@dataclass
class TableSnapshot:
    table: str
    columns: list[str]
    count: int
    sha256: str
    rows: list[tuple] | None = field(default=None, repr=False)  # only when count <= KEEP_ROWS


def _ordered(table: sa.Table, dialect: str) -> list[Any]:
    keys = list(table.primary_key.columns) or [c for c in table.columns if c.computed is None]
    if dialect != "postgresql":
        return keys
    return [c.collate("C") if isinstance(c.type, sa.String) else c for c in keys]


def rows_in_order(conn: sa.Connection, table: sa.Table, columns: list[str]) -> Iterable[tuple]:
    stmt = sa.select(*[table.c[c] for c in columns]).order_by(*_ordered(table, conn.dialect.name))
    # SQLite may keep a whole number in a REAL column as an integer: compare it as the float it is.
    floats = [isinstance(table.c[c].type, (sa.Float, sa.Numeric)) for c in columns]
    for row in conn.execution_options(stream_results=True, yield_per=5000).execute(stmt):
        yield tuple(norm(float(v) if f and v is not None else v) for v, f in zip(row, floats))


def snapshot_table(conn: sa.Connection, table: sa.Table, columns: list[str] | None = None) -> TableSnapshot:
    cols = [c for c in (columns or [c.name for c in table.columns if c.computed is None]) if c in table.c]
    digest = hashlib.sha256()
    kept: list[tuple] | None = []
    count = 0
    for row in rows_in_order(conn, table, cols):
        digest.update(repr(row).encode())
        digest.update(b"\n")
        count += 1
        if kept is not None:
            kept.append(row)
            if len(kept) > KEEP_ROWS:
                kept = None
    return TableSnapshot(table.name, cols, count, digest.hexdigest(), kept)


def snapshot(
    engine: sa.Engine, tables: Mapping[str, list[str] | None] | None = None, *, skip: Iterable[str] = ()
) -> dict[str, TableSnapshot]:
    """tables: {name: columns or None for all}; None: every table but alembic's. Absent tables are left out."""
    present = set(sa.inspect(engine).get_table_names())
    if tables is None:
        tables = {t: None for t in sorted(present) if not t.startswith("alembic_")}
    skipped = set(skip)
    wanted = [t for t in tables if t in present and t not in skipped]
    metadata = sa.MetaData()
    metadata.reflect(engine, only=wanted)
    with engine.connect() as conn:
        return {name: snapshot_table(conn, metadata.tables[name], tables[name]) for name in wanted}


def upgrade_tables() -> dict[str, list[str] | None]:
    """What an upgrade must keep: every column of the core tables, the keys of the trace tables."""
    return {**{t: None for t in CORE_TABLES}, **{t: list(cols) for t, cols in KEY_ONLY_TABLES.items()}}


def same_columns(before: dict[str, TableSnapshot]) -> dict[str, list[str] | None]:
    """The column lists of a first snapshot, to read the same columns after an upgrade."""
    return {name: list(snap.columns) for name, snap in before.items()}


def compare(before: dict[str, TableSnapshot], after: dict[str, TableSnapshot]) -> list[str]:
    """One line per table that lost rows, gained rows or changed content (with the first difference)."""
    problems = []
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            problems.append(f"{name}: table missing after")
        elif new.columns != old.columns:
            problems.append(f"{name}: columns {old.columns} became {new.columns}")
        elif new.count != old.count:
            problems.append(f"{name}: {old.count} rows before, {new.count} after")
        elif new.sha256 != old.sha256:
            problems.append(f"{name}: same count, different content{first_difference(old.rows, new.rows)}")
    return problems


def first_difference(old: list[tuple] | None, new: list[tuple] | None) -> str:
    if old is None or new is None:
        return ""
    for a, b in zip(old, new):
        if a != b:
            return f" (first difference: {str(a)[:200]} became {str(b)[:200]})"
    return ""


def row_counts(engine: sa.Engine) -> dict[str, int]:
    """Row count of every table, alembic's included."""
    with engine.connect() as conn:
        prep = conn.dialect.identifier_preparer
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {prep.quote(t)}")).scalar_one()
            for t in sorted(sa.inspect(conn).get_table_names())
        }


def json_null_counts(engine: sa.Engine) -> dict[str, int]:
    """SQL NULLs per JSON column: a JSON-typed copy would silently turn them into JSON 'null'."""
    metadata = sa.MetaData()
    metadata.reflect(engine)
    found = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for column in table.columns:
                if isinstance(column.type, sa.JSON):
                    found[f"{table.name}.{column.name}"] = conn.execute(
                        sa.select(sa.func.count()).select_from(table).where(column.is_(None))
                    ).scalar_one()
    return found
