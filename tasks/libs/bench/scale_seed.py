"""Seeding a scale store straight in MLflow's own schema: the rows of N runs (run_rows), inserted
in bulk (bulk_insert: PostgreSQL through COPY, SQLite through executemany), then ANALYZE."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.libs.bench.scale_spec import ScaleTarget
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.databases import engine_for, sqlite_connection
from tasks.libs.core.settings import Settings


@contextmanager
def store_engine(settings: Settings) -> Iterator[Any]:
    """The store's engine (core.databases.engine_for: no pool, disposed at the end)."""
    with engine_for(backend_store_uri(settings, reveal=True)) as engine:
        yield engine


def run_rows(t: ScaleTarget, start: int, stop: int, total: int) -> dict[str, list[tuple]]:
    """MLflow's rows for runs start..stop-1 of the scale experiment: the run, 3 params, 3 tags
    (its name, user and one of ours), 3 metrics with their latest values."""
    now = int(time.time() * 1000)
    rows: dict[str, list[tuple]] = {k: [] for k in ("runs", "params", "tags", "metrics", "latest_metrics")}
    for i in range(start, stop):
        run = f"{t.run_prefix}{i:024x}"
        name = f"scale-{i:07d}"
        begun = now - (total - i) * 1000
        rows["runs"].append(
            (run, name, "LOCAL", "", "", "bench", "FINISHED", begun, begun + 500, "", "active",
             f"{t.artifact_location}/{run}/artifacts", int(t.experiment_id))
        )  # fmt: skip
        rows["params"] += [("p0", f"v{i % 10}", run), ("p1", str(i % 100), run), ("p2", "adam", run)]
        rows["tags"] += [("mlflow.runName", name, run), ("mlflow.user", "bench", run), ("team", f"t{i % 5}", run)]
        values = ((i * 7919) % 1000 / 1000, (i * 104729) % 1000 / 1000, i / max(total, 1))
        for key, value in zip(("m0", "m1", "m2"), values):
            rows["metrics"].append((key, value, begun, run, 0, False))
            rows["latest_metrics"].append((key, value, begun, 0, False, run))
    return rows


COLUMNS = {
    "runs": "run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, end_time, "
    "source_version, lifecycle_stage, artifact_uri, experiment_id",
    "params": "key, value, run_uuid",
    "tags": "key, value, run_uuid",
    "metrics": "key, value, timestamp, run_uuid, step, is_nan",
    "latest_metrics": "key, value, timestamp, step, is_nan, run_uuid",
}


def bulk_insert(settings: Settings, rows: dict[str, list[tuple]]) -> int:
    """rows (table -> tuples in COLUMNS order) into the store, parents first, in one transaction."""
    count = 0
    if settings.backend == "postgres":
        import csv
        import io

        with store_engine(settings) as engine:
            conn = engine.raw_connection()
            try:
                cur = conn.cursor()
                for table in COLUMNS:
                    if not rows.get(table):
                        continue
                    buf = io.StringIO()
                    writer = csv.writer(buf)
                    for row in rows[table]:
                        writer.writerow(["t" if v is True else "f" if v is False else v for v in row])
                    buf.seek(0)
                    cur.copy_expert(f"COPY {table} ({COLUMNS[table]}) FROM STDIN WITH (FORMAT csv)", buf)
                    count += len(rows[table])
                conn.commit()
            finally:
                conn.close()
        return count
    with sqlite_connection(settings.sqlite_file, timeout=60) as conn:
        for table in COLUMNS:
            if not rows.get(table):
                continue
            marks = ", ".join("?" * len(rows[table][0]))
            conn.executemany(f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})", rows[table])
            count += len(rows[table])
    return count


def analyze(settings: Settings) -> None:
    """Fresh planner statistics after a bulk load, as autovacuum (PostgreSQL) would make them."""
    with store_engine(settings) as engine, engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def load_runs(t: ScaleTarget, start: int, stop: int, total: int, batch: int) -> dict[str, Any]:
    began, rows = time.perf_counter(), 0
    for first in range(start, stop, batch):
        rows += bulk_insert(t.settings, run_rows(t, first, min(first + batch, stop), total))
    seconds = time.perf_counter() - began
    analyze(t.settings)
    return {"rows": rows, "runs": stop - start, "seconds": seconds, "rows_per_s": rows / seconds if seconds else 0.0}
