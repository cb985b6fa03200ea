"""Checks 1-7: write through the tracking and registry API, then read every value back.

On a server with workspaces on, check 1 first creates the checks' own workspace and makes it the
client's (mlflow.set_workspace: every later request carries X-MLFLOW-WORKSPACE).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from tasks.libs.checks.context import CheckContext
from tasks.libs.checks.failures import probe_health, upload_failure
from tasks.libs.reporting.records import CheckFailed

PARAMS = {"learning_rate": "0.01", "batch_size": "32", "epochs": "5", "model_type": "logistic_regression"}
EPOCHS = 5
MODEL_FILES = ("MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt")


def expected_metrics() -> dict[str, list[float]]:
    """accuracy rising and loss falling over steps 0-4 (exact binary fractions: no rounding doubt)."""
    return {
        "accuracy": [0.5 + 0.0625 * step for step in range(EPOCHS)],
        "loss": [1.0 - 0.125 * step for step in range(EPOCHS)],
    }


def check_experiment(ctx: CheckContext) -> str:
    probe_health(ctx.url)
    client = ctx.client
    where = enter_workspace(ctx)
    ctx.experiment_id = client.create_experiment(ctx.experiment_name, tags={"mlflow-ops.check": "deployment"})
    by_name = client.get_experiment_by_name(ctx.experiment_name)
    if by_name is None or by_name.experiment_id != ctx.experiment_id:
        raise CheckFailed(f"experiment {ctx.experiment_name!r} not found by name after creating it")
    by_id = client.get_experiment(ctx.experiment_id)
    if by_id.name != ctx.experiment_name or by_id.lifecycle_stage != "active":
        raise CheckFailed(f"experiment {ctx.experiment_id} reads back as {by_id.name!r} ({by_id.lifecycle_stage})")
    run = client.create_run(ctx.experiment_id, run_name=ctx.run_name)
    ctx.run_id = run.info.run_id
    if client.get_run(ctx.run_id).info.run_name != ctx.run_name:
        raise CheckFailed(f"run {ctx.run_id} does not read back with its name {ctx.run_name!r}")
    if ctx.workspace:
        where += _unseen_from_default(ctx)
    return f"{where}experiment {ctx.experiment_id} read back by name and id; run {ctx.run_name} created"


def _unseen_from_default(ctx: CheckContext) -> str:
    """The experiment and run of the checks' workspace are not listed, nor found, in 'default'."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.workspace_context import WorkspaceContext

    with WorkspaceContext("default"):
        listed = [e.name for e in ctx.client.search_experiments(filter_string=f"name = '{ctx.experiment_name}'")]
        try:
            ctx.client.get_run(ctx.run_id)
            seen = True
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            seen = False
    if listed or seen:
        raise CheckFailed(
            f"workspace 'default' {'lists experiment ' + ctx.experiment_name if listed else 'finds run ' + str(ctx.run_id)} "
            f"of workspace {ctx.workspace}: the workspaces are not apart"
        )
    return "neither listed nor found from workspace 'default'; "


def enter_workspace(ctx: CheckContext) -> str:
    """Create the checks' workspace and make it the client's; '' when the server has none."""
    from mlflow.utils.workspace_context import set_workspace

    if not ctx.workspace:
        return ""
    made = ctx.client.create_workspace(ctx.workspace, description="mlflow-ops deployment check")
    if made.name != ctx.workspace:
        raise CheckFailed(f"workspace {ctx.workspace!r} reads back as {made.name!r} after creating it")
    set_workspace(ctx.workspace)
    return f"workspace {ctx.workspace} created; "


def check_params(ctx: CheckContext) -> str:
    for key, value in PARAMS.items():
        with ctx.timed("logging call", f"log_param {key}"):
            ctx.client.log_param(ctx.run_id, key, value)
    got = ctx.client.get_run(ctx.run_id).data.params
    wrong = {k: got.get(k) for k, v in PARAMS.items() if got.get(k) != v}
    if wrong:
        raise CheckFailed(f"params read back wrong: {wrong} (expected {PARAMS})")
    return f"{len(PARAMS)} params read back with their values"


def check_metrics(ctx: CheckContext) -> str:
    expected = expected_metrics()
    for step in range(EPOCHS):
        for key, values in expected.items():
            with ctx.timed("logging call", f"log_metric {key} step {step}"):
                ctx.client.log_metric(ctx.run_id, key, values[step], step=step)
    for key, values in expected.items():
        history = ctx.client.get_metric_history(ctx.run_id, key)
        got = [(m.step, m.value) for m in history]
        if got != list(enumerate(values)):
            raise CheckFailed(f"{key} history reads back as {got}, expected {list(enumerate(values))}")
    return f"accuracy and loss histories read back in order over steps 0-{EPOCHS - 1}"


def check_dataset(ctx: CheckContext) -> str:
    import json

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    frame = pd.DataFrame(np.random.RandomState(7).rand(100, 3), columns=["feature_a", "feature_b", "feature_c"])
    dataset = from_pandas(frame, name="mlflow-ops-check-data")
    with mlflow.start_run(run_id=ctx.run_id), ctx.timed("logging call", "log_input dataset"):
        mlflow.log_input(dataset, context="training")
    inputs = ctx.client.get_run(ctx.run_id).inputs.dataset_inputs
    found = [i.dataset for i in inputs if i.dataset.name == dataset.name]
    if not found:
        raise CheckFailed(f"run inputs do not list dataset {dataset.name!r} (found {[i.dataset.name for i in inputs]})")
    got = found[0]
    columns = [c.get("name") for c in json.loads(got.schema or "{}").get("mlflow_colspec", [])]
    rows = json.loads(got.profile or "{}").get("num_rows")
    if columns != list(frame.columns):
        raise CheckFailed(f"dataset schema reads back with columns {columns}, expected {list(frame.columns)}")
    if rows != len(frame):
        raise CheckFailed(f"dataset profile reads back {rows} rows, expected {len(frame)}")
    if got.digest != dataset.digest:
        raise CheckFailed(f"dataset digest reads back as {got.digest}, expected {dataset.digest}")
    return f"dataset {dataset.name}: 3 columns, {rows} rows, digest {got.digest}"


def check_artifact(ctx: CheckContext) -> str:
    body = (
        f"mlflow-ops deployment check\nexperiment: {ctx.experiment_name}\nrun: {ctx.run_id}\n"
        + "".join(f"{k} = {v}\n" for k, v in PARAMS.items())
    ).encode()
    source = ctx.work_dir / "upload" / "check-report.txt"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(body)
    try:
        with ctx.timed("logging call", "log_artifact reports/check-report.txt"):
            ctx.client.log_artifact(ctx.run_id, str(source), artifact_path="reports")
    except Exception as exc:
        raise upload_failure("uploading reports/check-report.txt", exc, ctx.url) from exc
    listed = {f.path: f.file_size for f in ctx.client.list_artifacts(ctx.run_id, "reports")}
    if "reports/check-report.txt" not in listed:
        raise CheckFailed(f"reports/ lists {sorted(listed)} after the upload, not reports/check-report.txt")
    if listed["reports/check-report.txt"] != len(body):
        raise CheckFailed(
            f"reports/check-report.txt listed with {listed['reports/check-report.txt']} bytes, sent {len(body)}"
        )
    target = ctx.work_dir / "download"
    target.mkdir(exist_ok=True)
    local = Path(ctx.client.download_artifacts(ctx.run_id, "reports/check-report.txt", str(target)))
    got = local.read_bytes()
    if got != body:
        raise CheckFailed(f"downloaded bytes differ from those sent ({len(got)} vs {len(body)} bytes)")
    return f"reports/check-report.txt listed, downloaded, sha256 {hashlib.sha256(got).hexdigest()[:12]} matches"


def _training_data():
    import numpy as np

    rng = np.random.RandomState(0)
    features = rng.rand(200, 3)
    labels = (features[:, 0] + 0.5 * features[:, 1] > 0.75).astype(int)
    return features, labels


def check_model(ctx: CheckContext) -> str:
    import mlflow
    import mlflow.sklearn
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    features, labels = _training_data()
    model = LogisticRegression(max_iter=200).fit(features, labels)
    signature = infer_signature(features, model.predict(features))
    # Explicit requirements: inferring them loads the model in a subprocess (~3 s of client
    # CPU) that would blur the model-save latency, which is meant to measure the server.
    requirements = mlflow.sklearn.get_default_pip_requirements(include_skops=True)
    try:
        with ctx.timed("model save", "sklearn log_model"), mlflow.start_run(run_id=ctx.run_id):
            ctx.model_info = mlflow.sklearn.log_model(
                model, name="model", signature=signature, pip_requirements=requirements
            )
    except Exception as exc:
        raise upload_failure("logging the sklearn model", exc, ctx.url) from exc
    location = ctx.client.get_logged_model(ctx.model_info.model_id).artifact_location
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(ctx.work_dir / "model")))
    missing = [name for name in MODEL_FILES if not (local / name).is_file()]
    if missing:
        raise CheckFailed(f"model folder {location} lacks {', '.join(missing)}")
    model_file = _model_file_named_in(local / "MLmodel")
    if not (local / model_file).is_file():
        raise CheckFailed(f"MLmodel names {model_file!r} but the model folder has no such file")
    loaded = mlflow.sklearn.load_model(ctx.model_info.model_uri)
    if not np.array_equal(loaded.predict(features), model.predict(features)):
        raise CheckFailed("the loaded model predicts differently from the original on the same input")
    if not np.array_equal(loaded.predict_proba(features), model.predict_proba(features)):
        raise CheckFailed("the loaded model's probabilities differ from the original's")
    return f"{ctx.model_info.model_uri}: {model_file} + {', '.join(MODEL_FILES)}; same predictions on 200 rows"


def _model_file_named_in(mlmodel: Path) -> str:
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    name = flavors.get("sklearn", {}).get("pickled_model") or flavors.get("python_function", {}).get("model_path")
    if not name:
        raise CheckFailed("MLmodel names no model file (flavors.sklearn.pickled_model / python_function.model_path)")
    return name


def check_registry(ctx: CheckContext) -> str:
    client, name, info = ctx.client, ctx.model_name, ctx.model_info
    client.create_registered_model(name, description="mlflow-ops deployment check")
    location = client.get_logged_model(info.model_id).artifact_location
    versions = [
        client.create_model_version(name, source=location, run_id=ctx.run_id, model_id=info.model_id).version
        for _ in range(2)
    ]
    if [str(v) for v in versions] != ["1", "2"]:
        raise CheckFailed(f"new registered model got versions {versions}, expected 1 and 2")
    client.set_registered_model_alias(name, "champion", "2")
    client.set_model_version_tag(name, "1", "validation_status", "approved")
    by_alias = client.get_model_version_by_alias(name, "champion")
    if str(by_alias.version) != "2":
        raise CheckFailed(f"alias 'champion' resolves to version {by_alias.version}, expected 2")
    tags = client.get_model_version(name, "1").tags
    if tags.get("validation_status") != "approved":
        raise CheckFailed(f"version 1 reads back with tags {tags}, expected validation_status=approved")
    found = sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if found != ["1", "2"]:
        raise CheckFailed(f"search_model_versions finds versions {found}, expected ['1', '2']")
    models = client.search_registered_models(filter_string=f"name = '{name}'")
    if [m.name for m in models] != [name] or models[0].aliases.get("champion") not in ("2", 2):
        raise CheckFailed(f"search_registered_models finds {[(m.name, m.aliases) for m in models]}")
    return f"{name}: versions 1-2, alias champion -> 2, tag on version 1, found by search"
