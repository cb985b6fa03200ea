"""Check 9: the store underneath the server is sound, and artifacts are on disk where it says.

The database is only ever opened read-only: SQLite through a mode=ro URI, PostgreSQL in a
read-only transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from tasks.libs.checks.results import CheckFailed, CheckSkipped
from tasks.libs.checks.runner import CheckContext, describe_error


def check_storage(ctx: CheckContext) -> str:
    passed, skipped, problems = [], [], []
    for label, part in (("database", _database_part), ("artifact files", _artifacts_part)):
        try:
            passed.append(part(ctx))
        except CheckSkipped as exc:
            skipped.append(str(exc))
        except CheckFailed as exc:
            problems.append(str(exc))
        except Exception as exc:  # e.g. the server cannot list the run's artifacts any more
            problems.append(f"{label}: {describe_error(exc, ctx.url)}")
    if problems:
        raise CheckFailed("; ".join(problems))
    if not passed:
        raise CheckSkipped("; ".join(skipped))
    return "; ".join(passed + [f"not checked: {s}" for s in skipped])


def _database_part(ctx: CheckContext) -> str:
    if ctx.store_uri is None:
        raise CheckSkipped(f"database: {ctx.store_skip_reason or 'no backend store URI given'}")
    if ctx.store_uri.startswith("sqlite:"):
        return check_sqlite_file(sqlite_path(ctx.store_uri))
    if ctx.store_uri.startswith(("postgresql", "postgres:")):
        return check_postgres(ctx.store_uri)
    raise CheckSkipped(f"database: no storage check for {ctx.store_uri.split(':', 1)[0]} stores")


def sqlite_path(store_uri: str) -> Path:
    """sqlite:////abs/mlflow.db -> /abs/mlflow.db (SQLAlchemy's form: three slashes + the path)."""
    path = store_uri.split("://", 1)[1].split("?", 1)[0]
    path = unquote(path[1:] if path.startswith("/") else path)
    if path in ("", ":memory:"):
        raise CheckSkipped("database: an in-memory SQLite store has nothing on disk to check")
    return Path(path)


def check_sqlite_file(path: Path) -> str:
    """PRAGMA integrity_check and foreign_key_check on a read-only connection."""
    if not path.is_file():
        raise CheckFailed(f"database file {path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=20)
    except sqlite3.Error as exc:
        raise CheckFailed(f"cannot open {path} read-only: {exc}") from None
    try:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            raise CheckFailed(f"{path}: integrity_check reports {'; '.join(integrity[:3])}")
        orphans: dict[str, int] = {}
        for table, _rowid, parent, _fk in conn.execute("PRAGMA foreign_key_check"):
            key = f"{table} -> {parent}"
            orphans[key] = orphans.get(key, 0) + 1
        if orphans:
            raise CheckFailed(f"{path}: rows whose foreign key points nowhere: {_counts(orphans)}")
        tables = _sqlite_tables(conn)
    except sqlite3.DatabaseError as exc:
        raise CheckFailed(f"{path}: {exc}") from None
    finally:
        conn.close()
    if "alembic_version" not in tables or "experiments" not in tables:
        raise CheckFailed(f"{path} is a SQLite file but not an MLflow store ({len(tables)} tables)")
    return f"SQLite {path.name}: integrity ok, no orphan rows in {len(tables)} tables"


def _sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


# Every foreign key of the store's schema with its column pairs, from the catalog.
_PG_FOREIGN_KEYS = """
SELECT con.conname, cn.nspname, cl.relname, pn.nspname, pl.relname,
       array_agg(ca.attname ORDER BY k.ord), array_agg(pa.attname ORDER BY k.ord), con.convalidated
FROM pg_constraint con
JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace
JOIN pg_class pl ON pl.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = pl.relnamespace
CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(child_att, parent_att, ord)
JOIN pg_attribute ca ON ca.attrelid = con.conrelid AND ca.attnum = k.child_att
JOIN pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.parent_att
WHERE con.contype = 'f' AND cn.nspname = current_schema()
GROUP BY con.conname, cn.nspname, cl.relname, pn.nspname, pl.relname, con.convalidated
ORDER BY cl.relname, con.conname
"""
_PG_INVALID_INDEXES = """
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND NOT (i.indisvalid AND i.indisready)
"""
_PG_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"


def check_postgres(store_uri: str, connect_timeout: int = 10) -> str:
    """Orphan rows per foreign key, unvalidated constraints and invalid indexes, read-only."""
    import psycopg2
    from psycopg2 import sql

    dsn = "postgresql://" + store_uri.split("://", 1)[1]
    target = f"PostgreSQL {urlsplit(dsn).hostname}:{urlsplit(dsn).port}{urlsplit(dsn).path}"
    try:
        conn = psycopg2.connect(dsn, connect_timeout=connect_timeout)
    except psycopg2.Error as exc:
        raise CheckFailed(f"cannot connect to {target}: {_first_line(exc)}") from None
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute(_PG_TABLES)
            tables = [r[0] for r in cur.fetchall()]
            if "alembic_version" not in tables or "experiments" not in tables:
                raise CheckFailed(f"{target} is not an MLflow store ({len(tables)} tables)")
            cur.execute(_PG_FOREIGN_KEYS)
            foreign_keys = cur.fetchall()
            orphans, unvalidated = {}, []
            for name, cschema, child, pschema, parent, ccols, pcols, validated in foreign_keys:
                if not validated:
                    unvalidated.append(name)
                cur.execute(_orphan_count_query(sql, cschema, child, pschema, parent, ccols, pcols))
                count = cur.fetchone()[0]
                if count:
                    orphans[f"{child} -> {parent} ({name})"] = count
            cur.execute(_PG_INVALID_INDEXES)
            invalid_indexes = [r[0] for r in cur.fetchall()]
        conn.rollback()
    except psycopg2.Error as exc:
        raise CheckFailed(f"{target}: {_first_line(exc)}") from None
    finally:
        conn.close()
    problems = []
    if orphans:
        problems.append(f"rows whose foreign key points nowhere: {_counts(orphans)}")
    if unvalidated:
        problems.append(f"foreign keys not validated: {', '.join(unvalidated)}")
    if invalid_indexes:
        problems.append(f"invalid indexes: {', '.join(invalid_indexes)}")
    if problems:
        raise CheckFailed(f"{target}: " + "; ".join(problems))
    return f"{target}: no orphan rows across {len(foreign_keys)} foreign keys in {len(tables)} tables"


def _orphan_count_query(sql, cschema, child, pschema, parent, ccols, pcols):
    """SELECT count(*) of child rows with a non-null key that matches no parent row."""
    not_null = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in ccols)
    matches = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(p), sql.Identifier(c)) for c, p in zip(ccols, pcols)
    )
    return sql.SQL(
        "SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})"
    ).format(sql.Identifier(cschema, child), not_null, sql.Identifier(pschema, parent), matches)


def _artifacts_part(ctx: CheckContext) -> str:
    from mlflow.store.artifact.artifact_repository_registry import (
        get_artifact_repository,
    )

    if ctx.run_id is None:
        raise CheckSkipped("artifact files: needs experiment (no run was created)")
    roots = {"run": ctx.client.get_run(ctx.run_id).info.artifact_uri}
    if ctx.model_info is not None:
        roots["model"] = ctx.client.get_logged_model(ctx.model_info.model_id).artifact_location
    checked, problems = 0, []
    for what, uri in roots.items():
        root = local_artifact_path(uri, ctx.artifacts_dir)
        if root is None:
            raise CheckSkipped(f"artifact files: {uri} is not on a local disk we know (give artifacts_dir)")
        for path, size in _listed_files(get_artifact_repository(uri)):
            on_disk = root / path
            checked += 1
            if not on_disk.is_file():
                problems.append(f"{what} artifact {path} listed by the server but missing at {on_disk}")
            elif size is not None and on_disk.stat().st_size != size:
                problems.append(f"{what} artifact {path}: {on_disk.stat().st_size} bytes on disk, server lists {size}")
    if problems:
        raise CheckFailed("; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    if checked == 0:
        raise CheckSkipped("artifact files: the check run has no artifacts (artifact and model checks failed)")
    return f"{checked} artifact files on disk under {ctx.artifacts_dir or root} with the listed sizes"


def local_artifact_path(uri: str, artifacts_dir: Path | None) -> Path | None:
    """Where an artifact URI lives on disk: mlflow-artifacts:/x -> <artifacts_dir>/x, file:///x -> /x."""
    parts = urlsplit(uri)
    if parts.scheme == "mlflow-artifacts":
        return Path(artifacts_dir) / unquote(parts.path).lstrip("/") if artifacts_dir else None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def _listed_files(repo, path: str = ""):
    for info in repo.list_artifacts(path or None):
        if info.is_dir:
            yield from _listed_files(repo, info.path)
        else:
            yield info.path, info.file_size


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in sorted(counts.items()))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
