"""Seconds for db.backup, db.restore and db.migrate of a store with N metric rows, on both backends.

    .venv/bin/python benchmarks/lifecycle_timings.py [--rows 100000] [--runs 10]

A SQLite store is filled through MLflow's own store API (log_batch of 1000, 20 params and 5 tags
per run), backed up, restored into a second state dir, migrated into a PostgreSQL cluster of
its own (initdb'd in a temporary folder, free port); the migrated store is backed up and
restored into another database. Everything runs in temporary folders and is stopped at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabulate import tabulate

import tasks  # noqa: F401  (makes tasks/ importable)
from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import Settings, load_settings
from tasks.libs.lifecycle.backup import take_backup
from tasks.libs.lifecycle.internals.pgtools import with_database
from tasks.libs.lifecycle.migrate import migrate
from tasks.libs.lifecycle.restore import restore_backup
from tasks.libs.postgres.connection import create_database
from tasks.libs.postgres.providers import provider_for

PASSWORD = "lifecycle-bench"
T = TypeVar("T")


def settings_for(state: Path, backend: str, pg_port: int) -> Settings:
    state.mkdir(mode=0o755, exist_ok=True)
    return load_settings(
        environ={},
        local_file=False,
        overrides={
            "state_dir": str(state),
            "backend": backend,
            "server.port": free_port(),
            "postgres.port": pg_port,
            "postgres.provider": "local",
            "postgres.password": PASSWORD,
            "postgres.start_timeout": 120,
        },
    ).settings


def fill(path: Path, rows: int, runs: int) -> float:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    began = time.monotonic()
    store = SqlAlchemyStore(f"sqlite:///{path}", "mlflow-artifacts:/")
    exp = store.create_experiment("bench")
    now = int(time.time() * 1000)
    per_run = rows // runs
    for r in range(runs):
        run = store.create_run(exp, "bench", now, [], f"bench-{r}").info.run_id
        store.log_batch(run, [], [Param(f"p{i}", str(i)) for i in range(20)], [RunTag(f"t{i}", "v") for i in range(5)])
        for start in range(0, per_run, 1000):
            batch = [Metric(f"m{s % 10}", s * 0.5, now + s, s // 10) for s in range(start, min(start + 1000, per_run))]
            store.log_batch(run, batch, [], [])
    store.engine.dispose()
    return time.monotonic() - began


def timed(rows: list[list[str]], what: str, backend: str, action: Callable[[], T]) -> T:
    began = time.monotonic()
    result = action()
    rows.append([what, backend, f"{time.monotonic() - began:.2f} s"])
    print(f"  {what} ({backend}): {rows[-1][2]}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlflow-ops-lifecycle-bench-", dir="/tmp"))
    root.chmod(0o755)
    pg_port = free_port()
    source = settings_for(root / "source", "sqlite", pg_port)
    pg = settings_for(root / "source", "postgres", pg_port)
    db = provider_for(pg)
    rows: list[list[str]] = []
    try:
        print(db.start(), flush=True)
        print(f"filling a SQLite store with {args.rows} metric rows ...", flush=True)
        rows.append(["fill (MLflow log_batch)", "sqlite", f"{fill(source.sqlite_file, args.rows, args.runs):.2f} s"])
        backup = timed(rows, "db.backup", "sqlite", lambda: take_backup(source))
        restored = settings_for(root / "restored", "sqlite", pg_port)
        timed(
            rows,
            "db.restore",
            "sqlite",
            lambda: restore_backup(restored, backup.folder, force=False, say=lambda _: None),
        )
        result = timed(
            rows,
            "db.migrate (incl. schema, verify; no server checks)",
            "sqlite -> postgres",
            lambda: migrate(
                source, pg, source=None, dry_run=False, rewrite=None, server_checks=False, say=lambda _: None
            ),
        )
        assert not result.problems, result.problems
        for step in result.steps.rows:
            rows.append([f"  {step.name}", "", f"{step.seconds:.2f} s"])
        pg_backup = timed(rows, "db.backup", "postgres", lambda: take_backup(pg))
        target = with_database(settings_for(root / "restored", "postgres", pg_port), "restored")
        create_database(target, "restored", replace=True)
        timed(
            rows,
            "db.restore",
            "postgres",
            lambda: restore_backup(target, pg_backup.folder, force=False, say=lambda _: None),
        )
    finally:
        print(db.stop())
        shutil.rmtree(root, ignore_errors=True)
    print(tabulate(rows, headers=["operation", "backend", "time"]))


if __name__ == "__main__":
    main()
