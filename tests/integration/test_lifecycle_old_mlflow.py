"""A store written by a real older MLflow (2.22.5, in a private venv built once per session):
rehearsed and upgraded with every row kept, the auth database too; `--to VERSION` rehearses with
that release; a release pip cannot install fails in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.databases import engine_for
from tasks.libs.core.errors import UserError
from tasks.libs.lifecycle.backup import take_backup
from tasks.libs.lifecycle.internals.runtime import installed, runtime_for
from tasks.libs.lifecycle.internals.snapshot import compare, same_columns, snapshot, upgrade_tables
from tasks.libs.lifecycle.rehearsal import rehearse
from tasks.libs.lifecycle.upgrade import apply_upgrade
from tests.conftest import OLD_MLFLOW
from tests.support.lifecycle import OLD_REVISION, counts_and_revision, drop, old_store, pg_on, sqlite_in
from tests.support.settings import make_state_dir

pytestmark = [pytest.mark.integration, pytest.mark.old_mlflow]
POPULATE = Path(__file__).resolve().parents[1] / "support" / "old_mlflow_populate.py"


# SQLite only, to keep the suite inside its time budget (about 30 s a backend): the PostgreSQL
# upgrade of a store at this revision is tested in test_lifecycle_upgrade.py with rows made by SQL;
# add "postgres" here to run this one on both.
@pytest.fixture(params=["sqlite"])
def written_by_mlflow_2(request, old_mlflow):
    """A store (and on SQLite a basic-auth database) written by MLflow 2.22.5 itself."""
    _, python = old_mlflow
    state = make_state_dir()
    if request.param == "sqlite":
        settings = sqlite_in(state, **{"server.auth.enabled": True})
    else:
        settings = pg_on(request.getfixturevalue("pg_settings"), state, f"old_{state.name[-8:].lower()}")
    auth = [str(state / "auth" / "basic_auth.db")] if request.param == "sqlite" else []
    (state / "auth").mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": backend_store_uri(settings, reveal=True)}  # env, not argv
    out = subprocess.run([python, str(POPULATE), *auth], env=env, cwd=state, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    made = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("MADE ")).partition(" ")[2])
    assert made["mlflow"] == OLD_MLFLOW
    yield settings, made
    if request.param == "postgres":
        drop(settings)
    shutil.rmtree(state, ignore_errors=True)


def test_a_store_written_by_mlflow_2_rehearses_then_upgrades_keeping_every_row(written_by_mlflow_2):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    settings, made = written_by_mlflow_2
    assert counts_and_revision(settings)[1] == [OLD_REVISION]
    take_backup(settings)
    # (the deployment checks on a rehearsal copy are proven in test_lifecycle_upgrade.py; here, the rows)
    result = rehearse(settings, installed(), server_checks=False, say=lambda _: None)
    assert result.ok, (result.problems, result.steps.render())
    assert result.rows_checked["metrics"] == 4 * 42 and result.rows_checked["registered_model_aliases"] == 1
    assert result.rows_checked["datasets"] == 1 and result.rows_checked["inputs"] == 1
    if settings.backend == "sqlite":
        [auth] = [r for r in result.steps.rows if r.name.startswith("auth database")]
        assert auth.status == "ok" and str(installed().auth_head) in auth.detail

    uri = backend_store_uri(settings, reveal=True)
    with engine_for(uri) as engine:
        before = snapshot(engine, upgrade_tables())
    applied = apply_upgrade(settings, no_backup=False, say=lambda _: None)
    assert not applied.steps.failed and counts_and_revision(settings)[1] == [installed().head]
    with engine_for(uri) as engine:
        assert compare(before, snapshot(engine, same_columns(before))) == []  # every row survived
    store = SqlAlchemyStore(uri, "mlflow-artifacts:/")
    try:  # and the installed MLflow reads it
        run = store.get_run(made["runs"][0])
        assert run.data.params["lr"] == "0.01" and len(store.get_metric_history(run.info.run_id, "loss")) == 40
        assert store.get_run(made["runs"][-1]).info.lifecycle_stage == "deleted"
    finally:
        store.engine.dispose()


def test_to_version_rehearses_with_that_release_from_a_private_venv(old_mlflow):
    venvs, _ = old_mlflow
    state = make_state_dir()
    try:
        settings = sqlite_in(state, **{"lifecycle.venvs_dir": str(venvs)})
        runtime = runtime_for(settings, OLD_MLFLOW, say=lambda _: None)  # the session's venv, reused
        assert runtime.private and runtime.version == OLD_MLFLOW and runtime.head == OLD_REVISION
        older = runtime.revisions[runtime.revisions.index(OLD_REVISION) - 3]
        old_store(backend_store_uri(settings), older)
        result = rehearse(settings, runtime, server_checks=True, say=lambda _: None)
        assert result.ok, (result.problems, result.steps.render())
        steps = {r.name: r for r in result.steps.rows}
        assert steps[f"mlflow db upgrade (MLflow {OLD_MLFLOW})"].detail == f"{older} -> {OLD_REVISION}"
        assert steps["schema equals the fresh store's"].status == "ok"  # a fresh store made by 2.22.5
        assert steps["deployment checks on the upgraded copy"].status == "skipped"
        assert counts_and_revision(settings)[1] == [older]  # the store itself was only read
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_a_release_pip_cannot_install_fails_in_one_line(old_mlflow):
    venvs, _ = old_mlflow
    state = make_state_dir()
    try:
        settings = sqlite_in(state, **{"lifecycle.venvs_dir": str(venvs)})
        with pytest.raises(UserError) as err:
            runtime_for(settings, "9.99.0", say=lambda _: None)
        message = str(err.value)
        assert message.startswith("cannot install MLflow 9.99.0: ") and "\n" not in message
        assert "9.99.0" in message.partition(": ")[2] and "(log: " in message
        assert not (venvs / "mlflow-9.99.0").exists()  # no half-built venv is left to be reused
    finally:
        shutil.rmtree(state, ignore_errors=True)
