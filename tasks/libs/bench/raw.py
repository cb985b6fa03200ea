"""The floor under MLflow: raw inserts of metric-shaped rows straight into the same database.

A scratch table shaped like MLflow's `metrics` (key, value, timestamp, run_uuid, step,
is_nan) is created in the store the server uses, filled one row per commit and then
`batch_rows` rows per commit, and dropped. Bounded in rows and seconds. Also here: the
environment the bench records (versions, CPUs).
"""

from __future__ import annotations

import os
import platform
import sqlite3
import sys
import time
from importlib import metadata
from pathlib import Path

from tasks.libs.core.databases import sqlite_connection

TABLE = "mlflow_ops_bench_raw_metrics"
COLUMNS = "(key, value, timestamp, run_uuid, step, is_nan)"


def _rows(start: int, count: int) -> list[tuple]:
    now = int(time.time() * 1000)
    return [(f"raw_{i % 20}", float(i), now, "0" * 32, start + i, False) for i in range(count)]


def _measure(
    insert_one, insert_many, commit, *, single_rows: int, batch_rows: int, batches: int, max_seconds: float
) -> list[dict]:
    out = []
    began, done = time.perf_counter(), 0
    for i in range(int(single_rows)):
        insert_one(_rows(i, 1)[0])
        commit()
        done += 1
        if time.perf_counter() - began > max_seconds:
            break
    secs = time.perf_counter() - began
    out.append({"mode": "1 row/commit", "rows": done, "seconds": secs, "rows_per_s": done / secs if secs else 0.0})
    batch_rows, began, done = int(batch_rows), time.perf_counter(), 0
    for b in range(int(batches)):
        insert_many(_rows(10_000_000 + b * batch_rows, batch_rows))
        commit()
        done += batch_rows
        if time.perf_counter() - began > max_seconds:
            break
    secs = time.perf_counter() - began
    out.append(
        {"mode": f"{batch_rows} rows/commit", "rows": done, "seconds": secs, "rows_per_s": done / secs if secs else 0.0}
    )
    return out


def raw_sqlite(path: Path, **limits) -> list[dict]:
    """Raw insert rates into the SQLite file (its own journal mode; MLflow's busy_timeout)."""
    with sqlite_connection(path) as conn:
        conn.execute("PRAGMA busy_timeout = 20000")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (key VARCHAR(250) NOT NULL, value FLOAT NOT NULL, "
            "timestamp BIGINT NOT NULL, run_uuid VARCHAR(32) NOT NULL, step BIGINT NOT NULL, "
            "is_nan BOOLEAN NOT NULL)"
        )
        conn.commit()
        sql = f"INSERT INTO {TABLE} {COLUMNS} VALUES (?, ?, ?, ?, ?, ?)"
        result = _measure(
            lambda row: conn.execute(sql, row), lambda rows: conn.executemany(sql, rows), conn.commit, **limits
        )
        conn.execute(f"DROP TABLE {TABLE}")
        conn.commit()
        return result


def raw_postgres(conn, **limits) -> list[dict]:
    """Raw insert rates through a psycopg2 connection (execute_values for the batches); the caller closes it."""
    from psycopg2.extras import execute_values

    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (key VARCHAR(250) NOT NULL, value DOUBLE PRECISION "
            "NOT NULL, timestamp BIGINT NOT NULL, run_uuid VARCHAR(32) NOT NULL, step BIGINT NOT NULL, "
            "is_nan BOOLEAN NOT NULL)"
        )
        conn.commit()
        sql = f"INSERT INTO {TABLE} {COLUMNS} VALUES (%s, %s, %s, %s, %s, %s)"
        result = _measure(
            lambda row: cur.execute(sql, row),
            lambda rows: execute_values(cur, f"INSERT INTO {TABLE} {COLUMNS} VALUES %s", rows, page_size=len(rows)),
            conn.commit,
            **limits,
        )
        cur.execute(f"DROP TABLE {TABLE}")
        conn.commit()
    return result


def postgres_version(conn) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        return cur.fetchone()[0]


def environment() -> dict:
    """Versions and machine facts the numbers depend on."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "mlflow": version("mlflow"),
        "sqlalchemy": version("sqlalchemy"),
        "psycopg2": version("psycopg2-binary")
        if version("psycopg2-binary") != "not installed"
        else version("psycopg2"),
        "sqlite": sqlite3.sqlite_version,
        "uvicorn": version("uvicorn"),
        "httptools": version("httptools"),
        "uvloop": version("uvloop"),
        "scikit-learn": version("scikit-learn"),
    }
