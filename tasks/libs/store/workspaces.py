"""MLflow's workspaces in a store (MLflow 3.10+): whether the schema has them, their names, and
what each holds."""

from __future__ import annotations

from typing import Any

from tasks.libs.store.reader import StoreReader

DEFAULT_WORKSPACE = "default"
PROMPT_TAG = "mlflow.prompt.is_prompt"  # a registered model with this tag 'true' is a prompt


def has_workspaces(store: StoreReader) -> bool:
    """The store's schema knows workspaces (MLflow 3.10+ migrations: a workspaces table, a column on experiments)."""
    if "workspaces" not in store.tables():
        return False
    return any(c["name"] == "workspace" for c in store.inspector.get_columns("experiments"))


def workspace_names(store: StoreReader) -> list[str]:
    """Every workspace the store knows, and any named by a row without a workspaces row, 'default' first."""
    if not has_workspaces(store):
        return [DEFAULT_WORKSPACE]
    names = {r[0] for r in store.rows("SELECT name FROM workspaces")}
    names |= {r[0] for r in store.rows("SELECT DISTINCT workspace FROM experiments")}
    names |= {r[0] for r in store.rows("SELECT DISTINCT workspace FROM registered_models")}
    return sorted(names, key=lambda n: (n != DEFAULT_WORKSPACE, n))


def workspace_counts(store: StoreReader) -> dict[str, Any]:
    """Per workspace: experiments (deleted ones apart), runs, traces, registered models, prompts, model versions."""
    if not has_workspaces(store):
        return {"workspaces": [], "note": "this store predates MLflow's workspaces: everything is in one"}
    tables = set(store.tables())
    per: dict[str, dict[str, Any]] = {
        name: {
            "workspace": name,
            "experiments": 0,
            "deleted_experiments": 0,
            "runs": 0,
            "traces": 0,
            "registered_models": 0,
            "prompts": 0,
            "model_versions": 0,
        }
        for name in workspace_names(store)
    }
    listed = {r[0] for r in store.rows("SELECT name FROM workspaces")}
    for name, entry in per.items():
        entry["in_workspaces_table"] = name in listed
    for ws, stage, count in store.rows(
        "SELECT workspace, lifecycle_stage, count(*) FROM experiments GROUP BY workspace, lifecycle_stage"
    ):
        per[ws]["deleted_experiments" if stage == "deleted" else "experiments"] += count
    by_experiment = "JOIN experiments e ON e.experiment_id = t.experiment_id GROUP BY e.workspace"
    for ws, count in store.rows(f"SELECT e.workspace, count(*) FROM runs t {by_experiment}"):
        per[ws]["runs"] = count
    if "trace_info" in tables:
        for ws, count in store.rows(f"SELECT e.workspace, count(*) FROM trace_info t {by_experiment}"):
            per[ws]["traces"] = count
    prompt = (
        "EXISTS (SELECT 1 FROM registered_model_tags g WHERE g.name = m.name AND g.workspace = m.workspace "
        "AND g.key = :tag AND lower(g.value) = 'true')"
    )
    for ws, is_prompt, count in store.rows(
        f"SELECT m.workspace, CASE WHEN {prompt} THEN 1 ELSE 0 END AS p, count(*) FROM registered_models m "
        "GROUP BY m.workspace, p",
        {"tag": PROMPT_TAG},
    ):
        per[ws]["prompts" if is_prompt else "registered_models"] += count
    for ws, count in store.rows("SELECT workspace, count(*) FROM model_versions GROUP BY workspace"):
        per[ws]["model_versions"] = count
    return {"workspaces": list(per.values())}
