"""`db.migrate`: SQLite -> PostgreSQL keeping every ID, one transaction, verified; refusals; dry run;
artifact-root rewrite."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess

import pytest
import sqlalchemy as sa

from tasks.libs.core.credentials import backend_store_uri, store_uri_and_password_env
from tasks.libs.core.errors import UserError
from tasks.libs.lifecycle.internals.pgtools import table_counts, with_database
from tasks.libs.lifecycle.internals.runtime import db_upgrade, installed
from tasks.libs.lifecycle.migrate import migrate
from tasks.libs.postgres.connection import create_database, drop_database
from tests.support.lifecycle import (
    add_workspace,
    counts_and_revision,
    head_store,
    pg_on,
    pretend_server_runs,
    sha256,
    sqlite_in,
)
from tests.support.settings import make_state_dir

pytestmark = pytest.mark.integration
TEMPLATE = "lifecycle_fresh_schema"


@pytest.fixture(scope="module")
def source():
    """A SQLite store at head with one of everything, and what was made in it."""
    state = make_state_dir()
    made = head_store(state / "source.db")
    yield state / "source.db", made
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def fresh_schema(pg_settings):
    """A database with the schema `mlflow db upgrade` makes, to copy targets from (TEMPLATE, 0.2 s)."""
    settings = with_database(pg_settings, TEMPLATE)
    create_database(settings, TEMPLATE, replace=True)
    uri, env = store_uri_and_password_env(settings)
    db_upgrade(installed(), uri, settings=settings, env=env)
    yield TEMPLATE
    drop_database(pg_settings, TEMPLATE)


@pytest.fixture
def stores(pg_settings, source, request):
    """(sqlite settings aimed at a copy of the source, postgres settings aimed at an empty database)."""
    state = make_state_dir()
    copy = state / "mlflow.db"
    shutil.copyfile(source[0], copy)
    name = f"migrated_{state.name[-8:].lower()}"
    target = pg_on(pg_settings, state, name)
    if "fresh_schema" in request.fixturenames:
        create_database(target, name, template=request.getfixturevalue("fresh_schema"), replace=True)
    yield sqlite_in(state, **{"postgres.port": pg_settings.postgres.port}), target
    drop_database(target, name)
    shutil.rmtree(state, ignore_errors=True)


def _migrate(sqlite_settings, pg, **kwargs):
    args = {"source": None, "dry_run": False, "rewrite": None, "server_checks": False, **kwargs}
    return migrate(sqlite_settings, pg, say=lambda _: None, **args)


def test_migrate_keeps_every_id_verifies_and_the_next_experiment_is_max_plus_one(stores, source):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    sqlite_settings, pg = stores
    before = sha256(sqlite_settings.sqlite_file)
    result = _migrate(sqlite_settings, pg, server_checks=True)
    assert result.problems == [], result.steps.render()
    steps = {r.name: r for r in result.steps.rows}
    assert (
        steps["target schema: mlflow db upgrade (MLflow 3.17.2)"].status == "ok"
    )  # the schema is MLflow's, not the copy's
    assert "every run" in result.compared and "4 run IDs" in result.compared
    assert result.checks is not None and not result.checks.failed
    assert sha256(sqlite_settings.sqlite_file) == before
    assert counts_and_revision(pg)[1] == [installed().head]
    store = SqlAlchemyStore(backend_store_uri(pg, reveal=True), "mlflow-artifacts:/")
    try:
        assert {r.info.run_id for r in store.search_runs([source[1]["experiment"]], "", 3)} == set(
            source[1]["runs"] + source[1]["deleted"]
        )
        assert store.create_experiment("after-the-move") == str(int(source[1]["experiment"]) + 1)
        store.create_run(source[1]["experiment"], "tester", 1, [], "after")
    finally:
        store.engine.dispose()
    assert (
        "experiments_experiment_id_seq",
        "experiments.experiment_id",
        int(source[1]["experiment"]),
    ) in result.sequences
    assert not list((pg.state_path / "lifecycle").glob("*.journal"))
    with pytest.raises(UserError, match=r"already holds data \(datasets=1, experiment_tags=1, experiments=3"):
        _migrate(sqlite_settings, pg)  # a re-run into the now filled target


def test_migrate_keeps_the_workspaces_and_a_row_moved_to_another_workspace_is_a_difference(stores):
    """Data in two workspaces: rows and MLflow's workspace-aware stores agree on both sides (the server
    on such a copy, with workspaces turned on for it, is test_upgrade_keeps_data_in_two_workspaces's)."""
    from tasks.libs.lifecycle.internals.migrate_verify import compare_api

    sqlite_settings, pg = stores
    team = add_workspace(sqlite_settings.sqlite_file)
    result = _migrate(sqlite_settings, pg)
    assert result.problems == [], result.steps.render()
    assert "in 2 workspaces (default, team-b)" in result.compared, result.compared
    uri = backend_store_uri(pg, reveal=True)
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT workspace, name FROM registered_models ORDER BY workspace")).all()
            assert [tuple(r) for r in rows] == [("default", "model"), ("team-b", "model")]
        with engine.begin() as conn:  # as a bad copy would: the experiment lands in 'default'
            conn.execute(
                sa.text("UPDATE experiments SET workspace = 'default' WHERE experiment_id = :e"),
                {"e": int(team["experiment"])},
            )
    finally:
        engine.dispose()
    problems, _ = compare_api(
        backend_store_uri(sqlite_settings), uri, sqlite_settings.state_path / "api", max_runs=10, skip_uris=False
    )
    assert any(p.startswith("through the API, experiments differ") for p in problems), problems


@pytest.mark.usefixtures("fresh_schema")
def test_a_rerun_into_a_partly_filled_target_is_refused(stores):
    sqlite_settings, pg = stores
    engine = sa.create_engine(backend_store_uri(pg, reveal=True))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time, "
                "last_update_time, workspace) VALUES (7, 'half', 'x', 'active', 1, 1, 'default')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO runs (run_uuid, name, source_type, status, start_time, lifecycle_stage, experiment_id, "
                "artifact_uri) VALUES ('r7', 'half', 'LOCAL', 'RUNNING', 1, 'active', 7, 'x')"
            )
        )
    engine.dispose()
    before = table_counts(pg)
    with pytest.raises(UserError, match=r"already holds data \(runs=1\)"):
        _migrate(sqlite_settings, pg)
    assert table_counts(pg) == before


def test_dry_run_writes_nothing_and_counts_the_artifact_rewrite(stores):
    sqlite_settings, pg = stores
    result = _migrate(sqlite_settings, pg, dry_run=True, rewrite=("mlflow-artifacts:/", "s3://bucket/mlruns/"))
    assert result.problems == [] and result.plan is not None and result.plan.total_rows > 800
    assert result.rewrite is not None
    assert result.rewrite["experiments.artifact_location"] == 2 and result.rewrite["runs.artifact_uri"] == 4
    assert result.rewrite["model_versions.source"] == 1
    assert table_counts(pg) == {}  # not even the schema was made


@pytest.mark.usefixtures("fresh_schema")
def test_values_postgresql_would_refuse_are_listed_before_anything_is_written(stores):
    sqlite_settings, pg = stores
    with sqlite3.connect(sqlite_settings.sqlite_file) as conn:
        conn.execute("UPDATE experiments SET name = printf('%.300c', 'n') WHERE experiment_id = 1")
        conn.execute("UPDATE tags SET value = 'a' || char(0) || 'b' WHERE key = 'note'")
        conn.execute("UPDATE metrics SET step = 'seven' WHERE rowid = 1")
    result = _migrate(sqlite_settings, pg)
    assert "experiments.name: 1 value(s) longer than VARCHAR(256) (largest: 300)" in result.problems
    assert any(p.startswith("tags.value: 4 value(s) contain a NUL character") for p in result.problems)
    assert any(p.startswith("metrics.step: 1 value(s) stored by SQLite as another type") for p in result.problems)
    assert {t: n for t, n in table_counts(pg).items() if n} == {"alembic_version": 1, "workspaces": 1}


def test_a_source_behind_the_installed_mlflow_is_refused(stores):
    sqlite_settings, pg = stores
    with sqlite3.connect(sqlite_settings.sqlite_file) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
    with pytest.raises(UserError, match="upgrade a copy first"):
        _migrate(sqlite_settings, pg)
    assert table_counts(pg) == {}


@pytest.mark.usefixtures("fresh_schema")
def test_rewrite_artifact_root_moves_every_location_and_refuses_an_overflow(stores):
    sqlite_settings, pg = stores
    with pytest.raises(UserError, match=r"runs.artifact_uri up to \d+ characters, VARCHAR\(200\)"):
        _migrate(sqlite_settings, pg, rewrite=("mlflow-artifacts:/", "s3://" + "b" * 170 + "/"))
    result = _migrate(sqlite_settings, pg, rewrite=("mlflow-artifacts:/", "s3://bucket/mlruns/"))
    assert result.problems == [], result.steps.render()
    engine = sa.create_engine(backend_store_uri(pg, reveal=True))
    with engine.connect() as conn:
        uris = [r[0] for r in conn.execute(sa.text("SELECT artifact_uri FROM runs"))]
        sources = [r[0] for r in conn.execute(sa.text("SELECT source FROM model_versions"))]
    engine.dispose()
    assert len(uris) == 4 and all(u.startswith("s3://bucket/mlruns/1/") for u in uris)
    assert sources[0].startswith("s3://bucket/mlruns/")


def test_migrate_refuses_while_our_server_runs(stores):
    sqlite_settings, pg = stores
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a group of its own, as a server has
    try:
        pretend_server_runs(pg, sleeper.pid)
        with pytest.raises(UserError, match="server.stop"):
            _migrate(sqlite_settings, pg)
    finally:
        sleeper.kill()
        sleeper.wait()
