"""Copying a SQLite store's rows into PostgreSQL: the plan, the prescan, COPY, the sequences.

- Order: the target schema's `sorted_tables` (parents first). MLflow's foreign keys are NOT
  DEFERRABLE, so `SET CONSTRAINTS ALL DEFERRED` would not help: the order is what works.
- Values travel raw (sqlite3 tuples -> COPY text format), never through SQLAlchemy's types:
  its JSON type writes Python None as JSON 'null', which would turn SQL NULLs into something
  else in 12 JSON columns. Booleans become t/f, NaN/Infinity their PostgreSQL spelling.
- Skipped: alembic_version (the target's own upgrade wrote it) and generated columns
  (spans.duration_ns is GENERATED ALWAYS: inserting into it fails).
- The prescan reads every planned column once, before anything is written, for values
  PostgreSQL would refuse: longer than a VARCHAR(n), outside INTEGER, a NUL character, or
  stored by SQLite with the wrong type.
"""

from __future__ import annotations

import io
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

SKIP_TABLES = {"alembic_version", "alembic_version_auth"}
INT32 = (-(2**31), 2**31 - 1)
SQLITE_TYPES = {
    "int": "('integer','null')",
    "bool": "('integer','null')",
    "float": "('real','integer','null')",
    "bytes": "('blob','null')",
}


@dataclass
class TablePlan:
    name: str
    columns: list[str]  # copied, in the target's order
    kinds: list[str]  # bool | int | float | bytes | json | text | other
    rows: int


@dataclass
class Plan:
    tables: list[TablePlan]
    problems: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)


def _kind(column_type: Any) -> str:
    if isinstance(column_type, sa.Boolean):
        return "bool"
    if isinstance(column_type, sa.Integer):
        return "int"
    if isinstance(column_type, (sa.Float, sa.Numeric)):
        return "float"
    if isinstance(column_type, sa.LargeBinary):
        return "bytes"
    if isinstance(column_type, sa.JSON):
        return "json"
    if isinstance(column_type, sa.String):
        return "text"
    return "other"


def make_plan(source: sqlite3.Connection, source_meta: sa.MetaData, target_meta: sa.MetaData) -> Plan:
    """What to copy in which order, and every value the target would refuse (read-only on both)."""
    problems: list[str] = []
    extra = set(source_meta.tables) - set(target_meta.tables) - SKIP_TABLES
    problems += [f"source table {t} does not exist in the target schema" for t in sorted(extra)]
    tables = []
    for dst in target_meta.sorted_tables:
        if dst.name in SKIP_TABLES or dst.name not in source_meta.tables:
            continue
        src = source_meta.tables[dst.name]
        columns = [c for c in dst.columns if c.computed is None and c.name in src.c]
        problems += [
            f"{dst.name}.{c.name}: in the source, not in the target" for c in src.columns if c.name not in dst.c
        ]
        problems += [
            f"{dst.name}.{c.name}: NOT NULL in the target, absent in the source"
            for c in dst.columns
            if c.computed is None and c.name not in src.c and not c.nullable and c.server_default is None
        ]
        count, found = _prescan(source, dst.name, columns)
        problems += found
        tables.append(TablePlan(dst.name, [c.name for c in columns], [_kind(c.type) for c in columns], count))
    return Plan(tables, problems)


def _prescan(source: sqlite3.Connection, table: str, columns: list[sa.Column]) -> tuple[int, list[str]]:
    """One scan of the table with a SUM per condition; (row count, problems)."""
    checks: list[str] = []
    labels: list[tuple[str, str, str | None]] = []
    for c in columns:
        q = f'"{c.name}"'
        kind = _kind(c.type)
        if isinstance(c.type, sa.String) and c.type.length:
            checks.append(f"SUM(length({q}) > {c.type.length})")
            labels.append((c.name, f"longer than VARCHAR({c.type.length})", f"MAX(length({q}))"))
        if kind in ("text", "json"):
            checks.append(f"SUM(instr({q}, char(0)) > 0)")
            labels.append((c.name, "contain a NUL character (PostgreSQL text cannot)", None))
        if kind == "int" and not isinstance(c.type, sa.BigInteger):
            checks.append(f"SUM({q} NOT BETWEEN {INT32[0]} AND {INT32[1]})")
            labels.append((c.name, "outside the 32-bit INTEGER range", f"MAX(abs({q}))"))
        if not c.nullable:
            checks.append(f"SUM({q} IS NULL)")
            labels.append((c.name, "NULL where the target column is NOT NULL", None))
        if kind in SQLITE_TYPES:
            checks.append(f"SUM(typeof({q}) NOT IN {SQLITE_TYPES[kind]})")
            labels.append((c.name, f"stored by SQLite as another type than {SQLITE_TYPES[kind]}", None))
    row = source.execute(f'SELECT COUNT(*){"".join(", " + x for x in checks)} FROM "{table}"').fetchone()
    problems = []
    for (column, what, worst), n in zip(labels, row[1:]):
        if n:
            detail = ""
            if worst:
                largest = source.execute(f'SELECT {worst} FROM "{table}"').fetchone()[0]
                detail = f" (largest: {largest})"
            problems.append(f"{table}.{column}: {n} value(s) {what}{detail}")
    return int(row[0]), problems


def _copy_text(value: Any, kind: str) -> str:
    if value is None:
        return "\\N"
    if kind == "bool":
        return "t" if int(value) else "f"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\\\x" + bytes(value).hex()
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_tables(
    plan: Plan,
    source: sqlite3.Connection,
    cursor: Any,
    *,
    batch: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, float]:
    """COPY every planned table inside the caller's open transaction; seconds per table."""
    seconds = {}
    for table in plan.tables:
        began = time.monotonic()
        columns = ", ".join(f'"{c}"' for c in table.columns)
        reader = source.execute(f'SELECT {columns} FROM "{table.name}"')
        statement = f'COPY "{table.name}" ({columns}) FROM STDIN'
        done = 0
        while rows := reader.fetchmany(batch):
            buffer = io.StringIO()
            for row in rows:
                buffer.write("\t".join(_copy_text(v, k) for v, k in zip(row, table.kinds)))
                buffer.write("\n")
            buffer.seek(0)
            cursor.copy_expert(statement, buffer)
            done += len(rows)
            if progress:
                progress(table.name, done, table.rows)
        seconds[table.name] = time.monotonic() - began
    return seconds


OWNED_SEQUENCES = """
SELECT seq.relname, tbl.relname, att.attname
FROM pg_depend d
JOIN pg_class seq ON seq.oid = d.objid AND seq.relkind = 'S'
JOIN pg_class tbl ON tbl.oid = d.refobjid
JOIN pg_attribute att ON att.attrelid = tbl.oid AND att.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.deptype IN ('a', 'i') AND seq.relnamespace = current_schema()::regnamespace
ORDER BY tbl.relname, att.attname
"""


def reset_sequences(cursor: Any) -> list[tuple[str, str, int | None]]:
    """Every sequence owned by a column (serial: deptype a; identity: i) set to max(column).

    Without this the next create_experiment fails with a duplicate key, which MLflow reports
    as "Experiment(name=...) already exists". An empty table gets setval(seq, 1, false).
    """
    from psycopg2 import sql

    cursor.execute(OWNED_SEQUENCES)
    done = []
    for sequence, table, column in cursor.fetchall():
        cursor.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), sql.Identifier(table)))
        top = cursor.fetchone()[0]
        name = sql.Identifier(sequence).as_string(cursor)
        if top is None or top < 1:
            cursor.execute("SELECT setval(%s, 1, false)", (name,))
        else:
            cursor.execute("SELECT setval(%s, %s, true)", (name, top))
        done.append((sequence, f"{table}.{column}", top))
    return done
