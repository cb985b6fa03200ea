"""What is inside an MLflow store: one function per section, each returning plain data.

Every function takes a StoreReader (see reader.open_store); `inspect_store` opens the store
read-only and gathers the sections asked for. Integrity lives in integrity.py, workspaces in
workspaces.py, artifact sizes in usage.py.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from tasks.libs.artifacts.s3 import BucketView
from tasks.libs.core.databases import sqlite_journal_mode
from tasks.libs.store.integrity import integrity
from tasks.libs.store.reader import DEFAULT_LIMIT, StoreReader, file_size, first_line, open_store
from tasks.libs.store.revisions import is_known, tracking_scripts
from tasks.libs.store.usage import artifact_sizes, bucket_sizes
from tasks.libs.store.workspaces import workspace_counts

SECTIONS = ("tables", "schema", "integrity", "workspaces", "runs", "metrics", "registry", "sizes")
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
DEFAULT_STALE_HOURS = 24.0


def inspect_store(
    uri: str,
    artifacts_dir: str | Path | BucketView | None = None,
    *,
    sections: tuple[str, ...] | list[str] = SECTIONS,
    with_schema: bool = False,
    stale_hours: float = DEFAULT_STALE_HOURS,
    limit: int = DEFAULT_LIMIT,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """Open `uri` read-only and return {"store": masked uri, "dialect": ..., <section>: data}.

    artifacts_dir is the artifact folder, or a BucketView when the artifacts live in S3.
    """
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    with open_store(uri) as store:
        report: dict[str, Any] = {"store": store.shown_uri, "dialect": store.dialect}
        for section in sections:
            try:
                with store.section():
                    _gather(report, store, section, artifacts_dir, with_schema, stale_hours, limit, now_ms)
            except SQLAlchemyError as exc:
                # e.g. a store from an older MLflow lacks a table or column this section reads
                report[section] = {"error": f"could not read this section: {first_line(exc)}"}
        return report


def section_errors(report: dict[str, Any]) -> list[str]:
    """'section: message' for every section that could not be read."""
    return [f"{name}: {data['error']}" for name, data in report.items() if isinstance(data, dict) and "error" in data]


def _gather(report, store, section, artifacts_dir, with_schema, stale_hours, limit, now_ms) -> None:
    if section == "tables":
        report["tables"] = table_counts(store, with_schema=with_schema)
    elif section == "schema":
        report["schema"] = schema_revision(store)
    elif section == "integrity":
        report["integrity"] = integrity(store, limit=limit)
    elif section == "workspaces":
        report["workspaces"] = workspace_counts(store)
    elif section == "runs":
        report["runs"] = run_health(store, stale_hours=stale_hours, limit=limit, now_ms=now_ms)
    elif section == "metrics":
        report["metrics"] = metric_progress(store, limit=limit)
    elif section == "registry":
        report["registry"] = model_registry(store)
    elif section == "sizes":
        sizes = store_sizes(store)
        if isinstance(artifacts_dir, BucketView):
            sizes["artifacts"] = bucket_sizes(store, artifacts_dir, limit=limit)
        else:
            sizes["artifacts"] = artifact_sizes(store, artifacts_dir, limit=limit)
        report["sizes"] = sizes


# --- tables and schema -----------------------------------------------------------------


def table_counts(store: StoreReader, *, with_schema: bool = False) -> list[dict[str, Any]]:
    """Every table with its row count; with_schema adds columns, keys and (SQLite) CREATE."""
    tables = store.tables()
    keys_by_table: dict[str, list] = {}
    if with_schema:
        for fk in store.foreign_keys():
            keys_by_table.setdefault(fk.table, []).append(fk)
    creates = store.create_statements() if with_schema else {}
    columns_by_table = store.columns() if with_schema else {}
    result = []
    for table in tables:
        entry: dict[str, Any] = {"table": table, "rows": store.scalar(f"SELECT count(*) FROM {store.quote(table)}")}
        if with_schema:
            columns = columns_by_table.get(table, [])
            entry["columns"] = columns
            entry["primary_key"] = [
                c["name"] for c in sorted(columns, key=lambda c: c["primary_key"]) if c["primary_key"]
            ]
            entry["foreign_keys"] = [
                {"columns": list(fk.columns), "references": fk.parent, "parent_columns": list(fk.parent_columns)}
                for fk in keys_by_table.get(table, [])
            ]
            if table in creates:
                entry["create"] = creates[table]
        result.append(entry)
    return result


def schema_revision(store: StoreReader) -> dict[str, Any]:
    """The store's alembic revision against the head of the installed MLflow's migrations."""
    import mlflow
    from alembic.util.exc import CommandError

    scripts = tracking_scripts()
    head = scripts.get_current_head()
    revisions = [r[0] for r in store.rows("SELECT version_num FROM alembic_version")]
    info: dict[str, Any] = {
        "store_revision": ", ".join(revisions) or None,
        "head_revision": head,
        "mlflow_version": mlflow.__version__,
        "behind": None,
    }
    if not revisions:
        info.update(
            state="unknown", advice="alembic_version is empty: the schema was never stamped; run `mlflow db upgrade`"
        )
    elif revisions == [head]:
        info.update(state="up to date", behind=0, advice="")
    elif all(is_known(scripts, r) for r in revisions):
        try:
            behind = sum(1 for _ in scripts.iterate_revisions(head, revisions[0]))
            info["behind"] = behind - 1 if behind else None
        except CommandError:
            pass
        info.update(
            state="needs upgrade",
            advice=(
                f"`inv db.backup`, then `inv db.upgrade` (rehearses `mlflow db upgrade` of MLflow {mlflow.__version__} "
                "on a copy), then `inv db.upgrade --apply`"
            ),
        )
    else:
        info.update(
            state="newer than installed MLflow",
            advice=f"written by a newer MLflow than {mlflow.__version__}; upgrade MLflow, do not downgrade the store",
        )
    return info


# --- runs ------------------------------------------------------------------------------


def run_health(
    store: StoreReader,
    *,
    stale_hours: float = DEFAULT_STALE_HOURS,
    limit: int = DEFAULT_LIMIT,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """Run counts by status per experiment, stale RUNNING runs, runs without an end time."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    per_experiment: dict[Any, dict[str, Any]] = {}
    for exp_id, exp_name, status, stage, count in store.rows(
        "SELECT r.experiment_id, e.name, r.status, r.lifecycle_stage, count(*) FROM runs r "
        "LEFT JOIN experiments e ON e.experiment_id = r.experiment_id "
        "GROUP BY r.experiment_id, e.name, r.status, r.lifecycle_stage ORDER BY r.experiment_id"
    ):
        entry = per_experiment.setdefault(
            exp_id, {"experiment_id": exp_id, "experiment": exp_name, "total": 0, "deleted": 0}
        )
        entry["total"] += count
        if stage == "deleted":
            entry["deleted"] += count
        entry[status or "NONE"] = entry.get(status or "NONE", 0) + count
    cutoff = now_ms - int(stale_hours * 3600 * 1000)
    stale = _run_list(store, "r.status = 'RUNNING' AND r.start_time < :cutoff", {"cutoff": cutoff}, now_ms)
    no_end = _run_list(store, "r.end_time IS NULL", {}, now_ms)
    return {
        "total": sum(e["total"] for e in per_experiment.values()),
        "by_experiment": list(per_experiment.values()),
        "stale_hours": stale_hours,
        "stale_running": stale[:limit],
        "stale_running_count": len(stale),
        "without_end_time": no_end[:limit],
        "without_end_time_count": len(no_end),
    }


def _run_list(store: StoreReader, condition: str, params: dict[str, Any], now_ms: int) -> list[dict[str, Any]]:
    found = store.rows(
        "SELECT r.run_uuid, r.name, r.experiment_id, r.status, r.start_time FROM runs r "
        f"WHERE {condition} AND r.lifecycle_stage <> 'deleted' ORDER BY r.start_time",
        params,
    )
    return [
        {
            "run_id": run_id,
            "name": name,
            "experiment_id": exp_id,
            "status": status,
            "started": _iso(start),
            "age_hours": None if start is None else round((now_ms - start) / 3_600_000, 1),
        }
        for run_id, name, exp_id, status, start in found
    ]


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


# --- metrics ---------------------------------------------------------------------------


def metric_progress(store: StoreReader, *, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Per run and key: first and last value (by step, then timestamp), change, rows and steps."""
    stats = {
        (run, key): {"rows": rows, "steps": steps, "first_step": lo, "last_step": hi}
        for run, key, rows, steps, lo, hi in store.rows(
            'SELECT run_uuid, "key", count(*), count(DISTINCT step), min(step), max(step) '
            'FROM metrics GROUP BY run_uuid, "key"'
        )
    }
    ends: dict[tuple, dict[str, float]] = {}
    for run, key, value, is_nan, first_rank, last_rank in store.rows(
        'SELECT run_uuid, "key", value, is_nan, first_rank, last_rank FROM ('
        '  SELECT run_uuid, "key", value, is_nan,'
        '    ROW_NUMBER() OVER (PARTITION BY run_uuid, "key" ORDER BY step, timestamp, value) AS first_rank,'
        '    ROW_NUMBER() OVER (PARTITION BY run_uuid, "key" ORDER BY step DESC, timestamp DESC, value DESC) AS last_rank'
        "  FROM metrics) ranked WHERE first_rank = 1 OR last_rank = 1"
    ):
        value = float("nan") if is_nan else float(value)
        if first_rank == 1:
            ends.setdefault((run, key), {})["first"] = value
        if last_rank == 1:
            ends.setdefault((run, key), {})["last"] = value
    runs = {r[0]: (r[1], r[2], r[3]) for r in store.rows("SELECT run_uuid, name, experiment_id, start_time FROM runs")}
    entries = []
    for (run, key), stat in stats.items():
        first, last = ends[(run, key)]["first"], ends[(run, key)]["last"]
        name, exp_id, start = runs.get(run, (None, None, None))
        entries.append(
            {
                "run_id": run,
                "run_name": name,
                "experiment_id": exp_id,
                "key": key,
                "first": first,
                "last": last,
                "change": last - first,
                "relative_change": (last - first) / abs(first) if first else None,
                **stat,
                "_start": start or 0,
            }
        )
    # Newest runs first: with many runs those are the ones worth seeing.
    entries.sort(key=lambda e: (-e["_start"], e["run_id"], e["key"]))
    shown_runs: list[str] = []
    for e in entries:
        if e["run_id"] not in shown_runs:
            shown_runs.append(e["run_id"])
    keep = set(shown_runs[:limit])
    for e in entries:
        del e["_start"]
    return {
        "metric_rows": sum(s["rows"] for s in stats.values()),
        "runs_with_metrics": len(shown_runs),
        "series": len(stats),
        "per_run": [e for e in entries if e["run_id"] in keep],
        "runs_not_shown": max(0, len(shown_runs) - limit),
    }


# --- registry --------------------------------------------------------------------------


def model_registry(store: StoreReader) -> dict[str, Any]:
    """Registered models, their versions (with whether the source run still exists), aliases."""
    models = store.dicts(
        "SELECT m.name, m.workspace, m.creation_time, count(v.version) AS versions, max(v.version) AS latest_version "
        "FROM registered_models m LEFT JOIN model_versions v ON v.name = m.name AND v.workspace = m.workspace "
        "GROUP BY m.name, m.workspace, m.creation_time ORDER BY m.workspace, m.name"
    )
    for m in models:
        m["created"] = _iso(m.pop("creation_time"))
    versions = store.dicts(
        "SELECT v.name, v.version, v.current_stage AS stage, v.status, v.run_id, v.source, "
        "CASE WHEN v.run_id IS NULL THEN NULL WHEN r.run_uuid IS NULL THEN 0 ELSE 1 END AS run_exists "
        "FROM model_versions v LEFT JOIN runs r ON r.run_uuid = v.run_id ORDER BY v.workspace, v.name, v.version"
    )
    for v in versions:
        v["run_exists"] = None if v["run_exists"] is None else bool(v["run_exists"])
    aliases = store.dicts("SELECT name, alias, version FROM registered_model_aliases ORDER BY workspace, name, alias")
    return {"models": models, "versions": versions, "aliases": aliases}


# --- sizes -----------------------------------------------------------------------------


def store_sizes(store: StoreReader) -> dict[str, Any]:
    """SQLite: file, WAL and free pages (+ per-table bytes if dbstat exists); PostgreSQL: per table."""
    if store.dialect == "sqlite":
        path = store.sqlite_path
        assert path is not None  # set for every SQLite store
        files = {
            "database": file_size(path),
            "wal": file_size(Path(f"{path}-wal")),
            "shm": file_size(Path(f"{path}-shm")),
        }
        page_size = store.scalar("PRAGMA page_size")
        result: dict[str, Any] = {
            "files": files,
            "total_bytes": sum(v or 0 for v in files.values()),
            "journal_mode": sqlite_journal_mode(path),
            "free_bytes": store.scalar("PRAGMA freelist_count") * page_size,
        }
        try:
            result["tables"] = [
                {"table": name, "bytes": size}
                for name, size in store.rows(
                    # dbstat reports each b-tree; fold indexes into the table they belong to.
                    "SELECT coalesce(m.tbl_name, d.name) AS t, sum(d.pgsize) AS size FROM dbstat d "
                    "LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY t ORDER BY size DESC, t"
                )
            ]
        except OperationalError:  # SQLite built without the dbstat virtual table
            result["tables"] = None
        return result
    tables = store.dicts(
        'SELECT c.relname AS "table", pg_total_relation_size(c.oid) AS total_bytes, '
        "pg_relation_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes "
        "FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace "
        "ORDER BY pg_total_relation_size(c.oid) DESC, c.relname"
    )
    return {
        "database_bytes": store.scalar("SELECT pg_database_size(current_database())"),
        "total_bytes": sum(t["total_bytes"] for t in tables),
        "tables": tables,
    }
