"""Fill a store with an older MLflow, run by that MLflow's Python (a private venv), no server:

    MLFLOW_TRACKING_URI=<db uri> venv/bin/python tests/support/old_mlflow_populate.py [AUTH_DB]

Writes experiments with tags, runs with params, metrics (NaN and inf too) and tags, a dataset
input, a deleted run, a registered model with a version, an alias and tags; with AUTH_DB also
a basic-auth database holding a user with an experiment permission. Prints one JSON line of
what it made. Only APIs MLflow 2.x and 3.x share.
"""

import json
import os
import sys
import time

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag


def main() -> None:
    client = MlflowClient()
    exp = client.create_experiment("old-mlflow", tags={"team": "ops"})
    made: dict = {"mlflow": mlflow.__version__, "experiment": exp, "runs": []}
    now = int(time.time() * 1000)
    for i in range(4):
        run = client.create_run(exp, run_name=f"run-{i}", tags={"kind": "train"}).info.run_id
        client.log_batch(
            run,
            metrics=[Metric("loss", 1.0 / (s + 1), now + s, s) for s in range(40)]
            + [Metric("nan", float("nan"), now, 0), Metric("inf", float("inf"), now, 0)],
            params=[Param("lr", "0.01"), Param("long", "x" * 300)],
            tags=[RunTag("note", "line one\nline two")],
        )
        client.set_terminated(run)
        made["runs"].append(run)
    client.delete_run(made["runs"][-1])
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    with mlflow.start_run(run_id=made["runs"][0]):
        dataset = mlflow.data.from_pandas(pd.DataFrame({"a": [1, 2, 3]}), name="toy")  # type: ignore[attr-defined]
        mlflow.log_input(dataset, context="training")
    client.create_registered_model("old-model", tags={"stage": "dev"}, description="from MLflow 2")
    version = client.create_model_version(
        "old-model", f"runs:/{made['runs'][0]}/model", made["runs"][0], tags={"v": "1"}
    )
    client.set_registered_model_alias("old-model", "champion", version.version)
    if len(sys.argv) > 1:
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

        auth = SqlAlchemyStore()
        auth.init_db(f"sqlite:///{sys.argv[1]}")
        auth.create_user("alice", "alice-password-1", is_admin=False)
        auth.create_experiment_permission(exp, "alice", "EDIT")
        made["auth_user"] = "alice"
    print("MADE " + json.dumps(made))


if __name__ == "__main__":
    main()
