"""Is the PostgreSQL copy the same store? Row for row, and as MLflow's own store API sees it.

Rows: per table the count and a content hash in primary-key order (snapshot.py), plus the SQL
NULLs of the JSON columns. API: MLflow's SqlAlchemyStore (what the server runs) opened on the
source snapshot and on the target: the same experiments, run IDs, params, tags and metric
histories for every run (a stated, seeded sample of lifecycle.verify_runs on bigger stores),
the same registered models, versions and aliases. A store with workspaces in use is read the way
its server reads it, workspace by workspace (MLflow's workspace-aware stores; the plain ones refuse
such a store), and every entry names its workspace, so a row that changed workspace is a difference.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tasks.libs.core.databases import engine_for
from tasks.libs.lifecycle.internals.snapshot import compare, json_null_counts, snapshot
from tasks.libs.store.reader import open_store
from tasks.libs.store.workspaces import workspace_names


def compare_rows(source_uri: str, target_uri: str, *, skip_columns: dict[str, set[str]]) -> tuple[list[str], int]:
    """(problems, rows compared) over every table but alembic's; skip_columns were rewritten on purpose."""
    with engine_for(source_uri) as source, engine_for(target_uri) as target:
        tables = {t: None for t in sa.inspect(source).get_table_names() if not t.startswith("alembic_")}
        before = snapshot(source, tables)
        wanted = {
            name: [c for c in snap.columns if c not in skip_columns.get(name, set())] for name, snap in before.items()
        }
        if skip_columns:
            before = snapshot(source, dict(wanted))
        after = snapshot(target, dict(wanted))
        problems = compare(before, after)
        extra = sorted(set(sa.inspect(target).get_table_names()) - set(before) - {"alembic_version"})
        problems += [f"{t}: in the target, not in the source" for t in extra]
        if json_null_counts(source) != json_null_counts(target):
            problems.append("SQL NULLs in JSON columns differ (a JSON 'null' where NULL was)")
    return problems, sum(s.count for s in before.values())


def workspaces_in_use(uri: str) -> list[str]:
    """The store's workspaces when anything lives outside 'default'; [] when it is all in 'default'."""
    with open_store(uri) as store:
        names = workspace_names(store)
    return names if names != ["default"] else []


def compare_api(
    source_uri: str, target_uri: str, scratch: Path, *, max_runs: int, skip_uris: bool
) -> tuple[list[str], str]:
    """(problems, what was compared) through MLflow's store API on both stores."""
    workspaces = workspaces_in_use(source_uri)
    views = [
        _view(uri, scratch / name, max_runs=max_runs, skip_uris=skip_uris, workspaces=workspaces)
        for uri, name in ((source_uri, "a"), (target_uri, "b"))
    ]
    (source, sampled), (target, _) = views
    problems = []
    for key in ("experiments", "run_ids", "runs", "registered_models", "model_versions"):
        if source[key] != target[key]:
            problems.append(f"through the API, {key} differ{_first(source[key], target[key])}")
    total = len(source["run_ids"])
    what = (
        f"{len(source['experiments'])} experiments, {total} run IDs, "
        f"{'every run' if sampled == total else f'a sample of {sampled} runs'} (params, tags, metric histories), "
        f"{len(source['model_versions'])} model versions"
    )
    if workspaces:
        what += f", in {len(workspaces)} workspaces ({', '.join(workspaces)})"
    return problems, what


def _view(
    uri: str, artifacts: Path, *, max_runs: int, skip_uris: bool, workspaces: list[str]
) -> tuple[dict[str, Any], int]:
    artifacts.mkdir(parents=True, exist_ok=True)
    if not workspaces:
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        tracking, registry = SqlAlchemyStore(uri, str(artifacts)), RegistryStore(uri)
        try:
            return _view_of(tracking, registry, max_runs=max_runs, skip_uris=skip_uris, workspace=None)
        finally:
            _dispose(tracking, registry)
    from mlflow.utils.workspace_context import ServerWorkspaceContext

    view: dict[str, Any] = {}
    sampled = 0
    with _workspaces_on():
        from mlflow.store.model_registry.sqlalchemy_workspace_store import (
            WorkspaceAwareSqlAlchemyStore as WorkspaceRegistryStore,
        )
        from mlflow.store.tracking.sqlalchemy_workspace_store import WorkspaceAwareSqlAlchemyStore

        tracking, registry = WorkspaceAwareSqlAlchemyStore(uri, str(artifacts)), WorkspaceRegistryStore(uri)
        try:
            for workspace in workspaces:
                with ServerWorkspaceContext(workspace):
                    part, count = _view_of(
                        tracking, registry, max_runs=max_runs, skip_uris=skip_uris, workspace=workspace
                    )
                sampled += count
                for key, entries in part.items():
                    view.setdefault(key, []).extend(entries)
        finally:
            _dispose(tracking, registry, *[s for s in [getattr(tracking, "_workspace_provider", None)] if s])
    return {key: sorted(entries) for key, entries in view.items()}, sampled


@contextlib.contextmanager
def _workspaces_on() -> Iterator[None]:
    """MLflow's workspace-aware stores scope by workspace only while MLFLOW_ENABLE_WORKSPACES is true."""
    saved = os.environ.get("MLFLOW_ENABLE_WORKSPACES")
    os.environ["MLFLOW_ENABLE_WORKSPACES"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_WORKSPACES", None)
        else:
            os.environ["MLFLOW_ENABLE_WORKSPACES"] = saved


def _dispose(*stores: Any) -> None:
    """Close every pooled connection (PostgreSQL will not copy or drop a database someone is connected to);
    MLflow's workspace store keeps its engine in _engine, and is cached per URI."""
    for store in stores:
        with contextlib.suppress(Exception):
            (getattr(store, "engine", None) or store._engine).dispose()


def _view_of(
    tracking: Any, registry: Any, *, max_runs: int, skip_uris: bool, workspace: str | None
) -> tuple[dict[str, Any], int]:
    """One workspace's (or the whole store's) experiments, runs, models and versions; each entry
    starts with its workspace when there are several."""
    from mlflow.entities import ViewType

    at = (workspace,) if workspace else ()
    experiments = _pages(lambda token: tracking.search_experiments(view_type=ViewType.ALL, page_token=token))
    view: dict[str, Any] = {
        "experiments": sorted(
            (
                *at,
                e.experiment_id,
                e.name,
                e.lifecycle_stage,
                None if skip_uris else e.artifact_location,
                sorted(e.tags.items()),
            )
            for e in experiments
        )
    }
    runs = (
        _pages(
            lambda token: tracking.search_runs(
                [e.experiment_id for e in experiments], "", ViewType.ALL, page_token=token
            )
        )
        if experiments
        else []
    )
    run_ids = sorted(r.info.run_id for r in runs)
    view["run_ids"] = [(*at, run_id) for run_id in run_ids]
    chosen = run_ids if len(run_ids) <= max_runs else sorted(random.Random(0).sample(run_ids, max_runs))
    by_id = {r.info.run_id: r for r in runs}
    view["runs"] = [(*at, *_run(tracking, by_id[run_id], skip_uris)) for run_id in chosen]
    view["registered_models"] = sorted(
        (*at, m.name, sorted(m.tags.items()), sorted(a for a in getattr(m, "aliases", {}).items()))
        for m in _pages(lambda token: registry.search_registered_models(max_results=1000, page_token=token))
    )
    view["model_versions"] = sorted(
        (
            *at,
            v.name,
            str(v.version),
            v.run_id,
            v.current_stage,
            None if skip_uris else v.source,
            sorted(v.tags.items()),
        )
        for v in _pages(lambda token: registry.search_model_versions(max_results=10000, page_token=token))
    )
    return view, len(chosen)


def _run(tracking: Any, run: Any, skip_uris: bool) -> tuple:
    histories = []
    for key in sorted(run.data.metrics):
        history = tracking.get_metric_history(run.info.run_id, key)
        histories.append((key, sorted((m.step, m.timestamp, repr(m.value)) for m in history)))
    return (
        run.info.run_id,
        run.info.experiment_id,
        run.info.status,
        run.info.lifecycle_stage,
        None if skip_uris else run.info.artifact_uri,
        sorted(run.data.params.items()),
        sorted(run.data.tags.items()),
        histories,
    )


def _pages(fetch) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = fetch(token)
        found += list(page)
        token = getattr(page, "token", None)
        if not token:
            return found


def _first(a: Any, b: Any) -> str:
    if isinstance(a, list) and isinstance(b, list):
        for x, y in zip(a, b):
            if x != y:
                return f" (first: {str(x)[:160]} vs {str(y)[:160]})"
        return f" ({len(a)} vs {len(b)} entries)"
    return ""
