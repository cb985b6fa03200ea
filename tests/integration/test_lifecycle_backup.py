"""`db.backup` / `db.restore` on both backends: online and consistent under 4 writing clients, restorable
(counts and revision equal the manifest, the deployment checks pass on a server on the restored
store), tamper-evident, and careful with what a restore replaces."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.libs.checks.runner import all_checks
from tasks.libs.core.errors import UserError
from tasks.libs.lifecycle.backup import take_backup
from tasks.libs.lifecycle.internals.manifest import Manifest, verify_files
from tasks.libs.lifecycle.internals.pgtools import table_counts
from tasks.libs.lifecycle.internals.scratch import deployment_checks
from tasks.libs.lifecycle.restore import restore_backup
from tasks.libs.store.integrity import integrity, integrity_problems
from tasks.libs.store.reader import open_store
from tests.support.clients import Clients
from tests.support.lifecycle import counts_and_revision, drop, pg_on, sha256, sqlite_in
from tests.support.settings import make_state_dir

pytestmark = pytest.mark.integration
CLIENTS = 4


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backed_up(request):
    """A backup of a live server's store taken while 4 client processes keep logging metrics."""
    server = request.getfixturevalue(f"{request.param}_server")
    folder = make_state_dir()
    clients = Clients(server.url, folder, CLIENTS)
    try:
        assert clients.wait_for(lambda log: len(log.ok) >= 10, timeout=120), "the clients did not get going"
        logged_before = sum(len(log.ok) for log in clients.refresh())
        result = take_backup(server.settings)
        assert clients.wait_for(lambda log: len(log.ok) >= 10 + logged_before // CLIENTS + 5, timeout=120)
    finally:
        logs = clients.stop()
    assert all(not log.failed for log in logs), [log.failed for log in logs]
    yield server, result
    shutil.rmtree(result.folder, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def target(request, backed_up):
    """An empty store of the backup's backend, in a state dir of its own."""
    server, _ = backed_up
    state = make_state_dir()
    if server.settings.backend == "sqlite":
        settings = sqlite_in(state)
    else:
        settings = pg_on(request.getfixturevalue("pg_settings"), state, f"restored_{state.name[-8:].lower()}")
    yield settings
    if settings.backend == "postgres":
        drop(settings)
    shutil.rmtree(state, ignore_errors=True)


def test_backup_under_four_writers_is_consistent_and_restores_to_a_working_store(backed_up, target, tmp_path):
    server, result = backed_up
    manifest = result.manifest
    assert verify_files(result.folder, manifest) == []
    assert manifest.alembic_revision and manifest.row_counts["metrics"] > 0
    assert set(manifest.files) >= {"store.sqlite" if target.backend == "sqlite" else "store.pgdump", "artifacts.tar"}
    live, _ = counts_and_revision(server.settings)
    assert live["metrics"] > manifest.row_counts["metrics"]  # the clients kept logging after the snapshot

    restored = restore_backup(target, result.folder, force=False, say=lambda _: None)
    counts, revision = counts_and_revision(target)
    assert counts == manifest.row_counts and revision == [manifest.alembic_revision]
    assert restored.kept is None  # there was nothing to replace
    with open_store(_uri(target)) as store:
        assert integrity_problems(integrity(store)) == []
    report = deployment_checks(target, tmp_path / "checks")
    assert not report.failed, [(c.name, c.reason) for c in report.failed]
    assert [c.name for c in report.checks] == [c.name for c in all_checks() if c.name != "web UI"]


def test_a_tampered_backup_is_refused_and_nothing_is_restored(backed_up, target, tmp_path):
    _, result = backed_up
    copy = tmp_path / result.folder.name
    shutil.copytree(result.folder, copy)
    name = "store.sqlite" if target.backend == "sqlite" else "store.pgdump"
    with open(copy / name, "r+b") as fh:
        fh.seek(2000)
        byte = fh.read(1)
        fh.seek(2000)
        fh.write(bytes([byte[0] ^ 1]))
    before = table_counts(target) if target.backend == "postgres" else None
    with pytest.raises(UserError) as err:
        restore_backup(target, copy, force=True, say=lambda _: None)
    assert f"{name}: sha256 differs from the manifest" in str(err.value) and "\n" not in str(err.value)
    if target.backend == "sqlite":
        assert not target.sqlite_file.exists()
    else:
        assert table_counts(target) == before == {}


def test_restore_over_a_store_holding_data_needs_force_and_keeps_the_old_one(backed_up, target):
    _, result = backed_up
    restore_backup(target, result.folder, force=False, say=lambda _: None)
    old = sha256(target.sqlite_file) if target.backend == "sqlite" else None
    with pytest.raises(UserError, match="already holds data .*--force"):
        restore_backup(target, result.folder, force=False, say=lambda _: None)
    again = restore_backup(target, result.folder, force=True, say=lambda _: None)
    assert again.kept
    if target.backend == "sqlite":
        assert sha256(Path(again.kept) / target.sqlite_file.name) == old
    else:
        assert Manifest.read(Path(again.kept)).kind == "pre-restore"
    assert counts_and_revision(target)[0] == result.manifest.row_counts


def test_restore_refuses_while_our_server_uses_the_store(backed_up):
    server, result = backed_up
    with pytest.raises(UserError, match="server.stop"):
        restore_backup(server.settings, result.folder, force=True, say=lambda _: None)


def _uri(settings) -> str:
    from tasks.libs.core.credentials import backend_store_uri

    return backend_store_uri(settings, reveal=True)
