"""Whether an MLflow store's rows hang together: foreign-key orphans on both dialects, SQLite's
integrity_check, and PostgreSQL's foreign keys never validated and invalid indexes.

`inv inspect` shows integrity() as a section; the storage check and backups judge its findings
with integrity_problems().
"""

from __future__ import annotations

from typing import Any

from tasks.libs.store.reader import DEFAULT_LIMIT, ForeignKey, StoreReader


def integrity(store: StoreReader, *, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Foreign-key orphans per relationship; SQLite runs PRAGMA integrity_check, PostgreSQL lists
    foreign keys never validated (added NOT VALID) and invalid indexes."""
    keys = store.foreign_keys()
    tables = {t.lower() for t in store.tables()}  # SQLite names are case-insensitive
    orphans = [entry for fk in keys if (entry := _orphans(store, fk, parent_exists=fk.parent.lower() in tables))]
    check = [r[0] for r in store.rows(f"PRAGMA integrity_check({int(limit)})")] if store.dialect == "sqlite" else None
    return {
        "relationships_checked": len(keys),
        "orphans": orphans,
        "orphan_rows": sum(o["rows"] for o in orphans),
        "integrity_check": None if check is None else ("ok" if check == ["ok"] else check),
        "unvalidated_foreign_keys": store.unvalidated_foreign_keys(),
        "invalid_indexes": store.invalid_indexes(),
    }


def integrity_problems(found: dict[str, Any]) -> list[str]:
    """What integrity() found wrong, one phrase each (empty: the store is sound)."""
    problems = []
    check = found["integrity_check"]
    if check not in (None, "ok"):
        problems.append(f"integrity_check reports {'; '.join(check[:3])}")
    if found["orphans"]:
        counts = sorted(f"{o['table']} -> {o['parent']}{_constraint(o['name'])}: {o['rows']}" for o in found["orphans"])
        problems.append(f"rows whose foreign key points nowhere: {', '.join(counts)}")
    if found.get("unvalidated_foreign_keys"):
        problems.append(f"foreign keys not validated: {', '.join(found['unvalidated_foreign_keys'])}")
    if found.get("invalid_indexes"):
        problems.append(f"invalid indexes: {', '.join(found['invalid_indexes'])}")
    return problems


def _constraint(name: str) -> str:
    return f" ({name})" if name else ""


def _orphans(store: StoreReader, fk: ForeignKey, *, parent_exists: bool = True) -> dict[str, Any] | None:
    """One anti-join per foreign key (MATCH SIMPLE: a row with a NULL key is no orphan).

    SQLite lets a parent table be dropped under its children; then every keyed row is an orphan.
    """
    q = store.quote
    not_null = " AND ".join(f"c.{q(col)} IS NOT NULL" for col in fk.columns)
    where = f"FROM {q(fk.table)} c WHERE {not_null}"
    if parent_exists or fk.parent_schema is not None:
        parent = q(fk.parent) if fk.parent_schema is None else f"{q(fk.parent_schema)}.{q(fk.parent)}"
        match = " AND ".join(f"p.{q(pc)} = c.{q(col)}" for col, pc in zip(fk.columns, fk.parent_columns, strict=True))
        where += f" AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {match})"
    count = store.scalar(f"SELECT count(*) {where}")
    if not count:
        return None
    cols = ", ".join(f"c.{q(col)}" for col in fk.columns)
    return {
        "table": fk.table,
        "columns": list(fk.columns),
        "parent": fk.parent,
        "parent_columns": list(fk.parent_columns),
        "name": fk.name,
        "rows": count,
        "sample": [list(r) for r in store.rows(f"SELECT {cols} {where} LIMIT 3")],
    }
