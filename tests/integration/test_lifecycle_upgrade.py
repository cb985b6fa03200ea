"""`db.upgrade`: preflight refusals, the rehearsal (rows, schema, deployment checks), --apply, rollback.

The old stores are made at MLflow 2.22's revision by the installed MLflow's own migrations and
filled by SQL (no venv; tests/integration/test_lifecycle_old_mlflow.py uses a real MLflow 2.22).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.errors import UserError
from tasks.libs.lifecycle.backup import take_backup
from tasks.libs.lifecycle.internals.runtime import installed
from tasks.libs.lifecycle.rehearsal import rehearse
from tasks.libs.lifecycle.restore import restore_backup
from tasks.libs.lifecycle.upgrade import apply_upgrade, check_store
from tasks.libs.postgres.connection import create_database
from tests.support.lifecycle import (
    OLD_REVISION,
    counts_and_revision,
    drop,
    old_store,
    pg_on,
    pretend_server_runs,
    sha256,
    sqlite_in,
)
from tests.support.settings import make_state_dir

HEAD = installed().head


@pytest.fixture(scope="module")
def old_templates(pg_settings):
    """One old store per backend, built once; each test gets a copy (a file copy, a TEMPLATE database)."""
    state = make_state_dir()
    sqlite_file = state / "template.db"
    old_store(f"sqlite:///{sqlite_file}")
    pg = pg_on(pg_settings, state, "lifecycle_old_template")
    old_store(backend_store_uri(pg, reveal=True))
    yield {"sqlite": sqlite_file, "postgres": "lifecycle_old_template"}
    drop(pg)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def old(request, old_templates):
    """A store at MLflow 2.22's revision with rows in every core table, on each backend."""
    state = make_state_dir()
    if request.param == "sqlite":
        settings = sqlite_in(state)
        shutil.copyfile(old_templates["sqlite"], settings.sqlite_file)
    else:
        name = f"upgrade_{state.name[-8:].lower()}"
        settings = pg_on(request.getfixturevalue("pg_settings"), state, name)
        create_database(settings, name, template=old_templates["postgres"], replace=True)
    yield settings
    if request.param == "postgres":
        drop(settings)
    shutil.rmtree(state, ignore_errors=True)


def _fingerprint(settings):
    if settings.backend == "sqlite":
        return sha256(settings.sqlite_file)
    return counts_and_revision(settings)


@pytest.mark.integration
def test_rehearsal_upgrades_a_copy_checks_rows_schema_and_a_server_and_leaves_the_store(old):
    before = _fingerprint(old)
    result = rehearse(old, installed(), server_checks=True, say=lambda _: None)
    assert result.ok, (result.problems, result.steps.render())
    assert result.preflight.stored == OLD_REVISION and result.preflight.state == "behind"
    steps = {r.name: r for r in result.steps.rows}
    assert steps["revision is the head"].detail == f"['{HEAD}']"
    assert steps["schema equals the fresh store's"].status == "ok"
    assert result.rows_checked["metrics"] == 903 and result.rows_checked["model_versions"] == 1
    assert result.checks is not None and not result.checks.failed
    assert {c.name for c in result.checks.checks} >= {"experiment", "metrics", "model registry", "storage"}
    assert _fingerprint(old) == before  # the store itself was only read
    assert "take a backup (none yet)" in steps  # no backup existed: the rehearsal took one


@pytest.mark.integration
def test_rehearsal_fails_when_the_upgraded_schema_differs_from_a_fresh_store(pg_settings):
    """A store that lost an index before the upgrade: the upgrade keeps it lost, the rehearsal says so."""
    state = make_state_dir()
    try:
        settings = sqlite_in(state, **{"lifecycle.server_checks": False})
        old_store(backend_store_uri(settings))
        with sqlite3.connect(settings.sqlite_file) as conn:
            conn.execute("DROP INDEX index_metrics_run_uuid")
        result = rehearse(settings, installed(), server_checks=True, say=lambda _: None)
        assert not result.ok
        assert "schema: missing index metrics.index_metrics_run_uuid" in result.problems
        assert result.checks is None  # no server is started on a copy already known to be wrong
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.integration
def test_preflight_refuses_a_store_newer_than_the_installed_mlflow_naming_both_revisions(old):
    uri = backend_store_uri(old, reveal=True)
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    engine.dispose()
    with pytest.raises(UserError) as err:
        check_store(old, installed())
    message = str(err.value)
    assert "ffffffffffff" in message and HEAD in message and "\n" not in message
    with pytest.raises(UserError, match="ffffffffffff"):
        apply_upgrade(old, no_backup=True, say=lambda _: None)


@pytest.mark.integration
def test_preflight_refuses_a_partly_migrated_store_and_points_at_the_last_backup(old):
    backup = take_backup(old).folder
    import sqlalchemy as sa

    engine = sa.create_engine(backend_store_uri(old, reveal=True))
    with engine.begin() as conn:  # what a later migration adds, while the recorded revision stayed
        conn.execute(sa.text("ALTER TABLE experiments ADD COLUMN workspace VARCHAR(63)"))
    engine.dispose()
    with pytest.raises(UserError) as err:
        rehearse(old, installed(), server_checks=False, say=lambda _: None)
    message = str(err.value)
    assert "partly migrated" in message and "experiments.workspace" in message
    assert f"--backup {backup}" in message and "\n" not in message


@pytest.mark.integration
def test_apply_needs_a_backup_of_this_revision_and_a_stopped_server(old):
    with pytest.raises(UserError, match="no backup of the .* store yet"):
        apply_upgrade(old, no_backup=False, say=lambda _: None)
    take_backup(old)
    aged = old.model_copy(deep=True)
    aged.lifecycle.max_backup_age = "0s"
    with pytest.raises(UserError, match="more than lifecycle.max_backup_age"):
        apply_upgrade(aged, no_backup=False, say=lambda _: None)
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a group of its own, as a server has
    try:
        pretend_server_runs(old, sleeper.pid)
        with pytest.raises(UserError, match="server.stop"):
            apply_upgrade(old, no_backup=False, say=lambda _: None)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert counts_and_revision(old)[1] == [OLD_REVISION]


@pytest.mark.integration
def test_apply_upgrades_keeps_every_row_and_a_restore_rolls_it_back(old):
    backup = take_backup(old).folder
    counts_before, _ = counts_and_revision(old)
    old_bytes = sha256(old.sqlite_file) if old.backend == "sqlite" else None
    result = apply_upgrade(old, no_backup=False, say=lambda _: None)
    assert not result.steps.failed
    counts_after, revision = counts_and_revision(old)
    assert revision == [HEAD]
    assert {t: counts_after[t] for t in counts_before if t != "alembic_version"} == {
        t: n for t, n in counts_before.items() if t != "alembic_version"
    }
    if old.backend == "sqlite":  # upgraded as a copy; the old file kept whole
        assert result.kept and sha256(Path(result.kept) / old.sqlite_file.name) == old_bytes
    assert apply_upgrade(old, no_backup=True, say=lambda _: None).preflight.state == "head"
    # Rolling back: the backup from before the upgrade replaces the upgraded store (more tables).
    restored = restore_backup(old, backup, force=True, say=lambda _: None)
    assert counts_and_revision(old) == (counts_before, [OLD_REVISION])
    assert restored.kept  # the upgraded store is kept (moved aside / dumped)


WORKSPACES_REVISION = "1b5f0d9ad7c1"  # the migration that added workspaces; 17 more follow it in 3.17.2


@pytest.mark.integration
def test_upgrade_keeps_data_in_two_workspaces(state_dir):
    """A store from the first MLflow with workspaces, data in 'default' and in 'team-b': the rehearsal
    compares the workspaces table and every workspace column, its server needs workspaces and gets
    them, and --apply keeps every row where it was."""
    import sqlalchemy as sa

    from tasks.libs.lifecycle.internals.schema_compare import build_reference

    settings = sqlite_in(state_dir)
    uri = backend_store_uri(settings)
    build_reference(WORKSPACES_REVISION, uri)
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO workspaces (name, description) VALUES ('team-b', 'a team')"))
        conn.execute(
            sa.text(
                "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time, "
                "last_update_time, workspace) VALUES (0, 'Default', 'mlflow-artifacts:/0', 'active', 1, 1, 'default'), "
                "(1, 'b', 'mlflow-artifacts:/workspaces/team-b/1', 'active', 1, 1, 'team-b')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO runs (run_uuid, name, source_type, status, start_time, end_time, lifecycle_stage, "
                "experiment_id, artifact_uri) VALUES ('b0b0', 'run-b', 'LOCAL', 'FINISHED', 1, 2, 'active', 1, "
                "'mlflow-artifacts:/workspaces/team-b/1/b0b0/artifacts')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO registered_models (name, creation_time, last_updated_time, workspace) "
                "VALUES ('model', 1, 1, 'default'), ('model', 1, 1, 'team-b')"
            )
        )
    engine.dispose()

    result = rehearse(settings, installed(), server_checks=True, say=lambda _: None)
    assert result.ok, (result.problems, result.steps.render())
    assert result.rows_checked["workspaces"] == 2 and result.rows_checked["registered_models"] == 2
    assert result.checks is not None and result.checks.workspace and not result.checks.failed

    take_backup(settings)
    assert not apply_upgrade(settings, no_backup=False, say=lambda _: None).steps.failed
    engine = sa.create_engine(uri)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT workspace FROM experiments WHERE experiment_id = 1")).scalar() == "team-b"
        models = conn.execute(sa.text("SELECT workspace FROM registered_models ORDER BY workspace")).scalars().all()
        assert models == ["default", "team-b"]
        assert sorted(conn.execute(sa.text("SELECT name FROM workspaces")).scalars()) == ["default", "team-b"]
    engine.dispose()
