"""`db.gc` (plan by SQL, mlflow gc through a server, orphans only with --apply) and `db.vacuum`, both backends."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.errors import UserError
from tasks.libs.lifecycle.gc import HELPER, collect
from tasks.libs.lifecycle.vacuum import vacuum
from tasks.libs.server.sidecars import ArtifactsServer
from tasks.libs.store.inspection import inspect_store, section_errors
from tasks.libs.store.report import render
from tests.support.lifecycle import drop, head_store, old_store, pg_on, sqlite_in
from tests.support.settings import make_settings, make_state_dir

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


def _age(settings, days: float) -> None:
    """Everything deleted so far was deleted `days` ago (as if gc ran a while later)."""
    then = int(time.time() * 1000) - int(days * DAY_MS)
    engine = sa.create_engine(backend_store_uri(settings, reveal=True))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET deleted_time = :t WHERE lifecycle_stage = 'deleted'"), {"t": then})
        conn.execute(
            sa.text("UPDATE experiments SET last_update_time = :t WHERE lifecycle_stage = 'deleted'"), {"t": then}
        )
        conn.execute(
            sa.text("UPDATE logged_models SET last_updated_timestamp_ms = :t WHERE lifecycle_stage = 'deleted'"),
            {"t": then},
        )
    engine.dispose()


def _write(folder, name: str, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"x" * size)


@pytest.fixture
def sqlite_store():
    """A store with old deleted runs, a deleted experiment and logged model, one recent deletion,
    their artifacts on disk in our server's layout, and two orphan folders."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    state = make_state_dir()
    settings = sqlite_in(state)
    made = head_store(settings.sqlite_file, runs=2, metrics=5)
    store = SqlAlchemyStore(backend_store_uri(settings), "mlflow-artifacts:/")
    gone_exp = store.create_experiment("to-purge")
    gone_run = store.create_run(gone_exp, "t", 1, [], "in-purged-experiment").info.run_id
    store.delete_experiment(gone_exp)
    store.delete_logged_model(made["logged_model"])
    _age(settings, 40)
    recent = store.create_run(made["experiment"], "t", 1, [], "recent").info.run_id
    store.delete_run(recent)
    store.engine.dispose()
    art = settings.artifacts_dir
    sizes = {made["deleted"][0]: 3000, gone_run: 2000, recent: 500}
    exp_of = {made["deleted"][0]: made["experiment"], gone_run: gone_exp, recent: made["experiment"]}
    for run, size in sizes.items():
        _write(art / exp_of[run] / run / "artifacts", "model.bin", size)
    _write(art / made["experiment"] / "models" / made["logged_model"] / "artifacts", "MLmodel", 700)
    _write(art / made["experiment"] / made["runs"][0] / "artifacts", "kept.txt", 10)
    _write(art / made["experiment"] / uuid.uuid4().hex / "artifacts", "orphan.bin", 1234)
    _write(art / "99" / "stray", "left.bin", 66)
    yield settings, made, {"gone_exp": gone_exp, "gone_run": gone_run, "recent": recent}
    shutil.rmtree(state, ignore_errors=True)


def test_sqlite_gc_dry_run_then_gc_through_a_temporary_server_then_orphans_with_apply(sqlite_store):
    settings, made, extra = sqlite_store
    other = make_settings(settings.state_path, backend="postgres")  # never set up here: claims no folder
    art = settings.artifacts_dir

    dry = collect(settings, other, older_than="30d", dry_run=True, apply=True, say=lambda _: None)
    planned = {(i.kind, i.id): i.bytes for i in dry.items}
    assert planned == {
        ("run", made["deleted"][0]): 3000,
        ("run", extra["gone_run"]): 2000,
        ("logged model", made["logged_model"]): 700,
        ("experiment", extra["gone_exp"]): 2000,
    }
    assert {o["bytes"] for o in dry.orphans} == {1234, 66} and not dry.orphans_removed
    assert (art / made["experiment"] / made["deleted"][0] / "artifacts" / "model.bin").exists()  # nothing removed

    result = collect(settings, other, older_than="30d", dry_run=False, apply=False, say=lambda _: None)
    assert {(i.kind, i.id) for i in result.removed} == set(planned) and not result.still_there
    assert "temporary artifacts-only server" in result.server
    assert not (art / made["experiment"] / made["deleted"][0]).exists()
    assert not (art / extra["gone_exp"]).exists()
    assert not (art / made["experiment"] / "models" / made["logged_model"]).exists()
    assert (art / made["experiment"] / extra["recent"] / "artifacts" / "model.bin").exists()  # deleted 0 days ago
    assert (art / made["experiment"] / made["runs"][0] / "artifacts" / "kept.txt").exists()
    assert ArtifactsServer(settings, name=HELPER).running() is None  # the helper server is gone
    assert len(result.orphans) == 2 and not result.orphans_removed  # listed, kept without --apply

    applied = collect(settings, other, older_than="30d", dry_run=False, apply=True, say=lambda _: None)
    assert applied.items == [] and len(applied.orphans_removed) == 2
    assert not (art / "99").exists()
    assert (art / made["experiment"] / made["runs"][0] / "artifacts" / "kept.txt").exists()

    report = vacuum(settings, full=False, say=lambda _: None)  # the server is stopped: allowed
    assert [r.name for r in report.steps.rows] == [
        "wal_checkpoint(TRUNCATE)",
        "VACUUM",
        "wal_checkpoint(TRUNCATE)",
        "integrity_check",
    ]
    assert report.before["mlflow.db"] > 0 and report.after["mlflow.db"] > 0


def test_postgres_gc_through_our_running_server_and_vacuum_sizes(postgres_server):
    """On the session's PostgreSQL server: only the two runs this test deletes and ages are old enough."""
    settings = postgres_server.settings
    client = MlflowClient(postgres_server.url)
    exp = client.create_experiment(f"gc-{uuid.uuid4().hex[:8]}")
    runs = [client.create_run(exp).info.run_id for _ in range(3)]
    for run in runs:
        client.log_text(run, "y" * 4096, "data/blob.txt")
    client.delete_run(runs[0])
    client.delete_run(runs[1])
    engine = sa.create_engine(backend_store_uri(settings, reveal=True))
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE runs SET deleted_time = :t WHERE run_uuid IN (:a, :b)"),
            {"t": int(time.time() * 1000) - 2 * DAY_MS, "a": runs[0], "b": runs[1]},
        )
    engine.dispose()
    other = sqlite_in(settings.state_path)  # no SQLite store in that state dir: claims no folder

    dry = collect(settings, other, older_than="1d", dry_run=True, apply=False, say=lambda _: None)
    assert {(i.id, i.bytes) for i in dry.items} == {(runs[0], 4096), (runs[1], 4096)}
    result = collect(settings, other, older_than="1d", dry_run=False, apply=False, say=lambda _: None)
    assert {i.id for i in result.removed} == {runs[0], runs[1]} and result.server.startswith("our server")
    assert not (settings.artifacts_dir / exp / runs[0]).exists()
    assert (settings.artifacts_dir / exp / runs[2] / "artifacts" / "data" / "blob.txt").exists()
    assert client.get_run(runs[2]).info.lifecycle_stage == "active"

    online = vacuum(settings, full=False, say=lambda _: None)  # plain VACUUM is online
    assert online.before["database"] > 0 and online.after["tables"] > 0
    assert len(online.tables) == 10 and "experiments" in {row[0] for row in online.tables}
    with pytest.raises(UserError, match="VACUUM FULL .*server.stop"):
        vacuum(settings, full=True, say=lambda _: None)


def test_postgres_vacuum_full_on_a_store_no_server_uses(pg_settings):
    state = make_state_dir()
    settings = pg_on(pg_settings, state, f"vacuum_{state.name[-8:].lower()}")
    try:
        old_store(backend_store_uri(settings, reveal=True), metrics=2000)
        engine = sa.create_engine(backend_store_uri(settings, reveal=True))
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM metrics WHERE step % 2 = 0"))
        engine.dispose()
        full = vacuum(settings, full=True, say=lambda _: None)
        assert full.steps.rows[0].name == "VACUUM (FULL, ANALYZE)"
        [metrics] = [row for row in full.tables if row[0] == "metrics"]
        assert _bytes(metrics[6]) < _bytes(metrics[5])  # total after < total before
    finally:
        drop(settings)
        shutil.rmtree(state, ignore_errors=True)


def test_sqlite_vacuum_is_refused_while_our_server_writes_to_the_file(sqlite_server):
    with pytest.raises(UserError, match="VACUUM locks it whole; `inv server.stop` first"):
        vacuum(sqlite_server.settings, full=False, say=lambda _: None)


def test_gc_covers_every_workspace_and_removes_what_a_cascade_left(state_dir):
    """A deleted run in a workspace other than 'default' is collected (mlflow gc --all-workspaces,
    through a temporary artifacts-only server with workspaces); the folders of the workspaces
    that exist are no orphans; the artifacts MLflow's CASCADE left of a deleted workspace are."""
    from mlflow.utils.workspace_context import WorkspaceContext

    from tasks.libs.server.control import start_server, stop_server

    settings = make_settings(state_dir, **{"server.workspaces": True, "server.workers": 1})
    start_server(settings)
    try:
        client = MlflowClient(settings.server.url)
        made = {}
        for workspace in ("team-a", "gone"):
            client.create_workspace(workspace)
            with WorkspaceContext(workspace):
                exp = client.create_experiment(f"gc-{workspace}")
                made[workspace] = (exp, [client.create_run(exp).info.run_id for _ in range(2)])
                for run in made[workspace][1]:
                    client.log_text(run, "z" * 2048, "data/blob.txt")
        with WorkspaceContext("team-a"):
            client.delete_run(made["team-a"][1][0])
        client.delete_workspace("gone", mode="CASCADE")  # its rows go, its artifacts stay
    finally:
        stop_server(settings)
    engine = sa.create_engine(backend_store_uri(settings, reveal=True))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET deleted_time = :t WHERE lifecycle_stage = 'deleted'"), {"t": 1})
    engine.dispose()
    art = settings.artifacts_dir / "workspaces"
    exp_a, (deleted, kept) = made["team-a"]
    # inspect counts per workspace; the CASCADE left no row of 'gone'
    report = inspect_store(backend_store_uri(settings, reveal=True), settings.artifacts_dir)
    counts = {w["workspace"]: (w["experiments"], w["runs"]) for w in report["workspaces"]["workspaces"]}
    assert counts == {"default": (1, 0), "team-a": (1, 2)}, counts
    assert "team-a" in render(report) and not section_errors(report)
    assert [o["path"] for o in report["sizes"]["artifacts"]["orphan_folders"]] == [str(art / "gone")]

    result = collect(settings, None, older_than="1d", dry_run=False, apply=True, say=lambda _: None)
    assert [(i.workspace, i.kind, i.id) for i in result.removed] == [("team-a", "run", deleted)]
    assert not result.still_there and result.workspaces == ["default", "team-a"]
    assert "temporary artifacts-only server" in result.server
    assert any(r.name.endswith("--all-workspaces") for r in result.steps.rows)
    assert not (art / "team-a" / exp_a / deleted).exists()
    assert (art / "team-a" / exp_a / kept / "artifacts" / "data" / "blob.txt").exists()
    assert [o["path"] for o in result.orphans] == [str(art / "gone")]  # team-a's folders are walked through
    assert not (art / "gone").exists() and result.orphans_removed
    assert ArtifactsServer(settings, name=HELPER).running() is None


def _bytes(shown: str) -> float:
    """A size as the vacuum table shows it ('680.0 KiB', '1.5 MiB') back in bytes."""
    amount, unit = shown.split()
    return float(amount) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
