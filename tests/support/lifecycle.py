"""Stores for the lifecycle tests: old-revision stores without a venv, head stores with one of
everything, settings aimed at a database of their own, byte and row fingerprints."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import sqlalchemy as sa

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.databases import engine_for, sqlite_readonly
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_until
from tasks.libs.lifecycle.internals.pgtools import with_database
from tasks.libs.lifecycle.internals.schema_compare import build_reference
from tasks.libs.lifecycle.internals.snapshot import row_counts
from tasks.libs.postgres.connection import create_database, drop_database, pg_connection
from tasks.libs.server.control import ServerPaths, ServerRecord
from tests.support.settings import make_settings

# The revision MLflow 2.22.5 stores are at (19 tables), 39 migrations behind 3.17.2.
OLD_REVISION = "0584bdc529eb"
RUN_IDS = [uuid.UUID(int=i).hex for i in range(1, 4)]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def old_store(uri: str, revision: str = OLD_REVISION, *, metrics: int = 300) -> None:
    """A store at `revision` made by the installed MLflow's own migrations, filled by SQL the way
    MLflow 2.22 fills it (sequence advanced, as a real store's is)."""
    build_reference(revision, uri)
    with engine_for(uri) as engine, engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time, "
                "last_update_time) VALUES (0, 'Default', 'mlflow-artifacts:/0', 'active', 1, 1), "
                "(1, 'old', 'mlflow-artifacts:/1', 'active', 1, 1)"
            )
        )
        conn.execute(sa.text("INSERT INTO experiment_tags (key, value, experiment_id) VALUES ('team', 'ops', 1)"))
        for i, run in enumerate(RUN_IDS):
            conn.execute(
                sa.text(
                    "INSERT INTO runs (run_uuid, name, source_type, status, start_time, end_time, lifecycle_stage, "
                    "experiment_id, artifact_uri) VALUES (:r, :n, 'LOCAL', 'FINISHED', 1000, 2000, 'active', 1, :u)"
                ),
                {"r": run, "n": f"run-{i}", "u": f"mlflow-artifacts:/1/{run}/artifacts"},
            )
            conn.execute(sa.text("INSERT INTO params (key, value, run_uuid) VALUES ('lr', '0.01', :r)"), {"r": run})
            conn.execute(sa.text("INSERT INTO tags (key, value, run_uuid) VALUES ('kind', 'train', :r)"), {"r": run})
            conn.execute(
                sa.text(
                    "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (:k, :v, :t, :r, :s, :nan)"
                ),
                [
                    {"k": "loss", "v": 1.0 / (s + 1), "t": 1000 + s, "r": run, "s": s, "nan": False}
                    for s in range(metrics)
                ]
                + [{"k": "nan", "v": 0.0, "t": 1000, "r": run, "s": 0, "nan": True}],
            )
            conn.execute(
                sa.text(
                    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES "
                    "('loss', :v, :t, :s, :f, :r), ('nan', 0.0, 1000, 0, :tr, :r)"
                ),
                {"v": 1.0 / metrics, "t": 999 + metrics, "s": metrics - 1, "f": False, "tr": True, "r": run},
            )
        conn.execute(
            sa.text("INSERT INTO registered_models (name, creation_time, last_updated_time) VALUES ('m', 1, 1)")
        )
        conn.execute(
            sa.text(
                "INSERT INTO model_versions (name, version, creation_time, last_updated_time, current_stage, source, "
                "run_id, status, storage_location) VALUES ('m', 1, 1, 1, 'None', :s, :r, 'READY', :s)"
            ),
            {"s": f"mlflow-artifacts:/1/{RUN_IDS[0]}/artifacts/model", "r": RUN_IDS[0]},
        )
        conn.execute(sa.text("INSERT INTO registered_model_aliases (alias, version, name) VALUES ('champion', 1, 'm')"))
        conn.execute(sa.text("INSERT INTO registered_model_tags (key, value, name) VALUES ('stage', 'dev', 'm')"))
        conn.execute(sa.text("INSERT INTO model_version_tags (key, value, name, version) VALUES ('v', '1', 'm', 1)"))
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT setval('experiments_experiment_id_seq', 1)"))


def pg_on(settings: Settings, state_dir: Path, database: str) -> Settings:
    """The session PostgreSQL's settings in another state dir, aimed at a database made empty now."""
    moved = settings.model_copy(deep=True, update={"state_dir": str(state_dir)})
    moved = with_database(moved, database)
    create_database(moved, database, replace=True)
    return moved


def sqlite_in(state_dir: Path, **overrides) -> Settings:
    return make_settings(state_dir, backend="sqlite", **overrides)


def drop(settings: Settings) -> None:
    drop_database(settings, str(sa.engine.make_url(backend_store_uri(settings)).database))


def counts_and_revision(settings: Settings) -> tuple[dict[str, int], list[str]]:
    with engine_for(backend_store_uri(settings, reveal=True)) as engine:
        with engine.connect() as conn:
            revision = [r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]
        return row_counts(engine), revision


def sessions_gone(settings: Settings, database: str, timeout: float = 30) -> bool:
    """Wait until no other session uses the database (a killed client's backend lingers a moment)."""

    def none_left() -> bool:
        with pg_connection(settings, dbname="postgres") as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,)
            )
            return cur.fetchone()[0] == 0

    return wait_until(none_left, timeout=timeout, interval=0.1)


def pretend_server_runs(settings: Settings, proc_pid: int) -> None:
    """A server pid file naming a process this test started (for the 'server must be stopped' refusals)."""
    ServerRecord.of(
        proc_pid, backend=settings.backend, host="127.0.0.1", port=1, url="http://127.0.0.1:1", store="x", log="x"
    ).write(ServerPaths.of(settings).pid_file)


def sqlite_journal_mode(path: Path) -> str:
    with sqlite_readonly(path) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def head_store(path: Path, *, runs: int = 3, metrics: int = 200) -> dict:
    """A SQLite store at the installed MLflow's head with one of everything the core tables hold,
    written through MLflow's own store API (as the server would, artifacts under mlflow-artifacts:/)."""
    from mlflow.entities import (
        Dataset,
        DatasetInput,
        ExperimentTag,
        InputTag,
        LoggedModelParameter,
        LoggedModelTag,
        Metric,
        Param,
        RunTag,
    )
    from mlflow.entities.model_registry import ModelVersionTag, RegisteredModelTag
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path}"
    tracking = SqlAlchemyStore(uri, "mlflow-artifacts:/")
    registry = RegistryStore(uri)
    made: dict = {"runs": [], "deleted": []}
    exp = tracking.create_experiment("lifecycle", tags=[ExperimentTag("team", "ops")])
    made["experiment"] = exp
    for i in range(runs + 1):
        run = tracking.create_run(exp, "tester", 1000 + i, [RunTag("kind", "train")], f"run-{i}").info.run_id
        tracking.log_batch(
            run,
            metrics=[Metric("loss", 1.0 / (s + 1), 1000 + s, s) for s in range(metrics)]
            + [Metric("nan", float("nan"), 1000, 0), Metric("inf", float("inf"), 1000, 0)],
            params=[Param("lr", "0.01"), Param("long", "x" * 400)],
            tags=[RunTag("note", "multi\nline\ttab \\ backslash")],
        )
        if i == runs:
            tracking.delete_run(run)
            made["deleted"].append(run)
        else:
            made["runs"].append(run)
    first = made["runs"][0]
    dataset = Dataset("toy", "d1g3st", "local", '{"uri": "/data/toy.csv"}', '{"a": "int"}', None)
    tracking.log_inputs(first, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
    model = tracking.create_logged_model(
        exp, "lm", first, [LoggedModelTag("t", "1")], [LoggedModelParameter("p", "1")], "sklearn"
    )
    made["logged_model"] = model.model_id
    registry.create_registered_model("model", [RegisteredModelTag("stage", "dev")], "a model")
    version = registry.create_model_version(
        "model", f"mlflow-artifacts:/{exp}/{first}/artifacts/model", first, [ModelVersionTag("v", "1")]
    )
    registry.set_registered_model_alias("model", "champion", version.version)
    for store in (tracking, registry):
        store.engine.dispose()
    return made


def bulk_metrics(uri: str, run_id: str, rows: int) -> None:
    """Many metric rows fast, straight by SQL (a COPY or restore of them takes long enough to be killed)."""
    with engine_for(uri) as engine, engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                    "SELECT 'bulk', g * 0.5, g, :r, g, false FROM generate_series(1, :n) g"
                ),
                {"r": run_id, "n": rows},
            )
        else:
            conn.exec_driver_sql(
                "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?) "
                "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) SELECT 'bulk', i * 0.5, i, ?, i, 0 FROM g",
                (rows, run_id),
            )


def add_workspace(path: Path, workspace: str = "team-b") -> dict:
    """A workspace beside 'default' in a SQLite store, with an experiment, a run with a param and a
    registered model named as the one head_store made in 'default' (names are per workspace),
    written through MLflow's workspace-aware stores as a server with workspaces would."""
    import os

    from mlflow.entities import Param, Workspace
    from mlflow.store.model_registry.sqlalchemy_workspace_store import (
        WorkspaceAwareSqlAlchemyStore as RegistryStore,
    )
    from mlflow.store.tracking.sqlalchemy_workspace_store import WorkspaceAwareSqlAlchemyStore
    from mlflow.store.workspace.sqlalchemy_store import SqlAlchemyStore as WorkspaceStore
    from mlflow.utils.workspace_context import ServerWorkspaceContext

    uri = f"sqlite:///{path}"
    saved = os.environ.get("MLFLOW_ENABLE_WORKSPACES")
    os.environ["MLFLOW_ENABLE_WORKSPACES"] = "true"
    try:
        WorkspaceStore(uri).create_workspace(Workspace(name=workspace))
        tracking, registry = WorkspaceAwareSqlAlchemyStore(uri, "mlflow-artifacts:/"), RegistryStore(uri)
        with ServerWorkspaceContext(workspace):
            exp = tracking.create_experiment(f"{workspace}-experiment")
            run = tracking.create_run(exp, "tester", 1, [], f"{workspace}-run").info.run_id
            tracking.log_batch(run, metrics=[], params=[Param("team", workspace)], tags=[])
            registry.create_registered_model("model")
        for store in (tracking, registry):
            store.engine.dispose()
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_WORKSPACES", None)
        else:
            os.environ["MLFLOW_ENABLE_WORKSPACES"] = saved
    return {"workspace": workspace, "experiment": exp, "run": run}
