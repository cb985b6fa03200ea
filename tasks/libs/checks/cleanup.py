"""The `cleanup` step of a check run: delete what the checks created, or the checks' own
workspace with everything in it."""

from __future__ import annotations

from tasks.libs.checks.context import CheckContext
from tasks.libs.reporting.records import CheckSkipped


def cleanup_check_objects(ctx: CheckContext) -> str:
    """Delete what this run created: traces, the prompt, the registered model and the experiment;
    in a workspace of its own, the workspace with everything in it (its artifacts first)."""
    from mlflow.exceptions import MlflowException

    if ctx.experiment_id is None:
        if ctx.workspace and _delete_workspace(ctx):
            return f"deleted workspace {ctx.workspace} (no experiment was created)"
        raise CheckSkipped("nothing to clean up: no experiment was created")
    if ctx.workspace:
        return _delete_workspace_and_artifacts(ctx)
    done = []
    if ctx.trace_ids:
        deleted = ctx.client.delete_traces(ctx.experiment_id, trace_ids=ctx.trace_ids)
        done.append(f"{deleted} trace(s)")
    for what, delete in (
        (f"prompt {ctx.prompt_name}", lambda: ctx.client.delete_prompt(ctx.prompt_name)),
        (f"registered model {ctx.model_name}", lambda: ctx.client.delete_registered_model(ctx.model_name)),
    ):
        try:
            delete()
            done.append(what)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    ctx.client.delete_experiment(ctx.experiment_id)
    done.append(f"experiment {ctx.experiment_name} (soft delete; `mlflow gc` purges it)")
    return "deleted " + ", ".join(done)


def _delete_workspace_and_artifacts(ctx: CheckContext) -> str:
    """MLflow's CASCADE deletes the workspace's rows, not its artifacts: those go first, through the server."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    location = ctx.client.get_experiment(ctx.experiment_id).artifact_location.rstrip("/")
    folder = location.rsplit("/", 1)[0]  # <root>/workspaces/<name>/<experiment id>: the workspace's whole folder
    if not folder.endswith(f"/workspaces/{ctx.workspace}"):
        folder = location
    get_artifact_repository(folder).delete_artifacts()
    _delete_workspace(ctx)
    return (
        f"deleted workspace {ctx.workspace} with everything in it (experiment, run, models, traces, prompt: "
        f"MLflow's CASCADE deletes the rows), after its artifacts at {folder}"
    )


def _delete_workspace(ctx: CheckContext) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        ctx.client.delete_workspace(ctx.workspace, mode="CASCADE")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True
