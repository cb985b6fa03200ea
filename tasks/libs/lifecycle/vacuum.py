"""`db.vacuum`: give space back and refresh statistics, with sizes before and after.

PostgreSQL: `VACUUM (ANALYZE)` (online: it takes SHARE UPDATE EXCLUSIVE, the server keeps
working) makes dead rows' space reusable and returns only trailing empty pages; `--full`
rewrites every table (ACCESS EXCLUSIVE: refused while our server runs; needs free disk about
the size of the largest table). SQLite: WAL checkpoint, VACUUM, checkpoint, integrity_check;
VACUUM blocks every writer (the server's would time out after 20 s), so it is refused while
our server runs on the file, and it needs free disk of about twice the file.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.libs.core.databases import sqlite_connection, sqlite_readonly
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.lifecycle.internals.journal import StepTable
from tasks.libs.lifecycle.internals.sqlite_files import checkpoint, file_sizes, integrity_check
from tasks.libs.postgres.connection import pg_connection
from tasks.libs.reporting.formats import human_bytes
from tasks.libs.server.control import running_record

TABLE_SIZES = (
    "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid), "
    "coalesce(s.n_dead_tup, 0) FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
    "WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace"
)


@dataclass
class VacuumResult:
    backend: str
    steps: StepTable
    before: dict[str, int] = field(default_factory=dict)  # what -> bytes
    after: dict[str, int] = field(default_factory=dict)
    tables: list[list[str]] = field(default_factory=list)  # PostgreSQL: the biggest tables, before/after


def vacuum(settings: Settings, *, full: bool, say: Callable[[str], None] = print) -> VacuumResult:
    server = running_record(settings)
    served = server is not None and server.backend == settings.backend
    result = VacuumResult(settings.backend, StepTable(say=say))
    if settings.backend == "sqlite":
        if server is not None and served:
            raise UserError(
                f"the MLflow server (pid {server.pid}) writes to this SQLite file and VACUUM locks it whole; `inv server.stop` first"
            )
        _sqlite(settings, result)
    else:
        if server is not None and served and full:
            raise UserError(
                f"VACUUM FULL locks every table while it rewrites it and the MLflow server (pid {server.pid}) uses them; "
                "`inv server.stop` first, or run without --full (online)"
            )
        _postgres(settings, result, full=full)
    return result


def _sqlite(settings: Settings, result: VacuumResult) -> None:
    path = settings.sqlite_file
    if not path.is_file():
        raise UserError(f"no SQLite store at {path}")
    free = shutil.disk_usage(path.parent).free
    if free < 2 * sum(file_sizes(path).values()):
        raise UserError(
            f"VACUUM needs free disk of about twice the store ({sum(file_sizes(path).values())} bytes); {free} free"
        )
    result.before = {**file_sizes(path), "free pages": _free_bytes(path)}
    steps = result.steps
    with steps.step("wal_checkpoint(TRUNCATE)") as row:
        row.detail = f"busy, log, checkpointed = {checkpoint(path)}"
    with steps.step("VACUUM"):
        try:
            with sqlite_connection(path, autocommit=True) as conn:
                conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            raise UserError(f"VACUUM failed ({exc}): another process holds the file") from None
    with steps.step("wal_checkpoint(TRUNCATE)") as row:
        row.detail = f"busy, log, checkpointed = {checkpoint(path)}"
    with steps.step("integrity_check") as row:
        problems = integrity_check(path)
        if problems:
            raise UserError(f"integrity_check after VACUUM reports: {'; '.join(problems[:3])}")
        row.detail = "ok"
    result.after = {**file_sizes(path), "free pages": _free_bytes(path)}


def _free_bytes(path) -> int:
    with sqlite_readonly(path) as conn:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0]) * int(
            conn.execute("PRAGMA page_size").fetchone()[0]
        )


def _postgres(settings: Settings, result: VacuumResult, *, full: bool) -> None:
    # VACUUM cannot run inside a transaction block
    with pg_connection(settings, timeout=10, autocommit=True) as conn, conn.cursor() as cur:
        before = _sizes(cur)
        cur.execute("SELECT pg_database_size(current_database())")
        database_before = cur.fetchone()[0]
        statement = "VACUUM (FULL, ANALYZE)" if full else "VACUUM (ANALYZE)"
        with result.steps.step(statement) as row:
            cur.execute(statement)
            row.detail = f"{len(before)} tables"
        after = _sizes(cur)
        cur.execute("SELECT pg_database_size(current_database())")
        database_after = cur.fetchone()[0]
    result.before = {"tables": sum(v[0] for v in before.values()), "database": database_before}
    result.after = {"tables": sum(v[0] for v in after.values()), "database": database_after}
    biggest = sorted(before, key=lambda t: -before[t][0])[:10]
    empty = (0, 0, 0, 0)
    result.tables = [
        [
            t,
            human_bytes(before[t][1]),
            human_bytes(after.get(t, empty)[1]),
            human_bytes(before[t][2]),
            human_bytes(after.get(t, empty)[2]),
            human_bytes(before[t][0]),
            human_bytes(after.get(t, empty)[0]),
            str(before[t][3]),
        ]
        for t in biggest
    ]


def _sizes(cur) -> dict[str, tuple[int, int, int, int]]:
    """table -> (total, heap, indexes, dead rows as the statistics last saw them)."""
    cur.execute(TABLE_SIZES)
    return {name: (int(total), int(heap), int(idx), int(dead)) for name, total, heap, idx, dead in cur.fetchall()}


TABLE_HEADERS = [
    "table",
    "heap before",
    "heap after",
    "indexes before",
    "indexes after",
    "total before",
    "total after",
    "dead rows before",
]
