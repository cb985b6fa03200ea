"""`db.gc`: permanently remove what was deleted long enough ago (wraps `mlflow gc`), and orphan folders.

`mlflow gc` has no dry run, and `--run-ids X` is not limited to X (it also purges every deleted
experiment and logged model), so the plan is computed here by SQL with MLflow's own criteria:
runs deleted (deleted_time) at least --older-than ago, deleted experiments last updated before
then (with their deleted runs), deleted logged models last updated before then. The plan is
shown with artifact sizes; then `mlflow gc --older-than` runs over the whole store and what
it really removed is read back. With proxied artifacts (`mlflow-artifacts:/`, our layout) it
needs a server: ours when it runs, else a temporary artifacts-only one on a free port.

With workspaces (server.workspaces, or a store that holds anything outside 'default') the plan
covers every workspace, as its SQL always did, and `mlflow gc` runs with --all-workspaces: without
it, it sees 'default' only and refuses a store with other workspaces. The temporary artifacts-only
server then runs with workspaces too, since gc names the workspace of every artifact it deletes.

Orphan folders (inspect finds them) go only with --apply. The artifact folder is shared by the
SQLite and the PostgreSQL store of a state dir, so a folder counts as an orphan only when
neither store claims it; when the other store cannot be read, nothing is removed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.libs.core.credentials import backend_store_uri, store_uri_and_password_env
from tasks.libs.core.durations import parse_duration
from tasks.libs.core.errors import ConfigError, UserError
from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import Settings
from tasks.libs.lifecycle.internals.journal import Journal, StepTable
from tasks.libs.lifecycle.internals.runtime import installed, run_mlflow
from tasks.libs.postgres.connection import check_reachable
from tasks.libs.server.auth import client_env
from tasks.libs.server.control import running_record
from tasks.libs.server.sidecars import ArtifactsServer
from tasks.libs.store.reader import StoreReader, open_store
from tasks.libs.store.usage import artifact_sizes, local_artifact_path, tree_size
from tasks.libs.store.workspaces import has_workspaces, workspace_names

HELPER = "gc-artifacts"


@dataclass
class Item:
    kind: str  # run | experiment | logged model
    id: str
    name: str
    uri: str | None
    bytes: int = 0
    files: int = 0
    workspace: str = "default"


@dataclass
class GcResult:
    older_than: str
    items: list[Item] = field(default_factory=list)
    removed: list[Item] = field(default_factory=list)
    still_there: list[Item] = field(default_factory=list)
    orphans: list[dict] = field(default_factory=list)
    orphans_removed: list[dict] = field(default_factory=list)
    orphans_note: str = ""
    server: str = ""
    workspaces: list[str] = field(default_factory=list)  # the store's, when it has workspaces in use
    steps: StepTable = field(default_factory=StepTable)


def plan(store: StoreReader, older_than_s: float, artifacts_dir: Path, *, now_ms: int | None = None) -> list[Item]:
    """What `mlflow gc --older-than` would remove now, with artifact sizes on disk."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    threshold = now_ms - int(older_than_s * 1000)
    items = [
        Item("run", r, n or "", u)
        for r, n, u in store.rows(
            "SELECT run_uuid, name, artifact_uri FROM runs WHERE lifecycle_stage = 'deleted' AND deleted_time <= :t "
            "ORDER BY deleted_time",
            {"t": threshold},
        )
    ]
    experiments = store.rows(
        "SELECT experiment_id, name, artifact_location FROM experiments WHERE lifecycle_stage = 'deleted' "
        "AND last_update_time < :t ORDER BY experiment_id",
        {"t": threshold},
    )
    seen = {i.id for i in items}
    for exp_id, _, _ in experiments:
        for r, n, u in store.rows(
            "SELECT run_uuid, name, artifact_uri FROM runs WHERE lifecycle_stage = 'deleted' AND experiment_id = :e",
            {"e": exp_id},
        ):
            if r not in seen:
                items.append(Item("run", r, n or "", u))
                seen.add(r)
    if "logged_models" in store.tables():
        items += [
            Item("logged model", m, n or "", u)
            for m, n, u in store.rows(
                "SELECT model_id, name, artifact_location FROM logged_models WHERE lifecycle_stage = 'deleted' "
                "AND last_updated_timestamp_ms <= :t ORDER BY model_id",
                {"t": threshold},
            )
        ]
    items += [Item("experiment", str(e), n or "", u) for e, n, u in experiments]
    _name_workspaces(store, items)
    for item in items:
        path = _folder(item, artifacts_dir)
        if path is not None and path.is_dir():
            item.bytes, item.files = tree_size(path)
    return items


def _name_workspaces(store: StoreReader, items: list[Item]) -> None:
    if not has_workspaces(store):
        return
    of_experiment = {str(e): w for e, w in store.rows("SELECT experiment_id, workspace FROM experiments")}
    of_run = dict(store.rows("SELECT r.run_uuid, e.workspace FROM runs r JOIN experiments e USING (experiment_id)"))
    of_model: dict[str, str] = {}
    if "logged_models" in store.tables():
        of_model = dict(
            store.rows("SELECT m.model_id, e.workspace FROM logged_models m JOIN experiments e USING (experiment_id)")
        )
    for item in items:
        found = {"run": of_run, "experiment": of_experiment, "logged model": of_model}[item.kind].get(item.id)
        item.workspace = found or item.workspace


def workspaces_in_use(store: StoreReader) -> list[str]:
    """The store's workspaces when anything lives outside 'default' (else [], and gc needs no workspace flag)."""
    names = workspace_names(store)
    return names if names != ["default"] else []


def _folder(item: Item, artifacts_dir: Path) -> Path | None:
    return local_artifact_path(item.uri, artifacts_dir)


def collect(
    settings: Settings,
    other: Settings | None,
    *,
    older_than: str,
    dry_run: bool,
    apply: bool,
    say: Callable[[str], None] = print,
) -> GcResult:
    seconds = parse_duration(older_than)
    uri = backend_store_uri(settings, reveal=True)
    result = GcResult(older_than, steps=StepTable(say=say))
    steps = result.steps
    with steps.step("plan by SQL (what mlflow gc would remove)") as row, open_store(uri) as store:
        result.items = plan(store, seconds, settings.artifacts_dir)
        result.workspaces = workspaces_in_use(store)
        row.detail = f"{len(result.items)} item(s), {sum(i.bytes for i in result.items)} bytes of artifacts"
        if result.workspaces:
            row.detail += f" in {len(result.workspaces)} workspaces"
    if not dry_run and result.items:
        with Journal(settings, "gc", settings.backend, backend_store_uri(settings)) as journal:
            steps.journal = journal
            _run_gc(settings, result, steps)
    elif not result.items:
        steps.skip("mlflow gc", "nothing was deleted long enough ago")
    else:
        steps.skip("mlflow gc", "dry run")
    with steps.step("orphan artifact folders") as row:
        result.orphans, result.orphans_note = orphans(settings, other)
        row.detail = f"{len(result.orphans)} folder(s), {sum(o['bytes'] for o in result.orphans)} bytes"
        if result.orphans_note:
            row.detail += f"; {result.orphans_note}"
    if apply and not dry_run and result.orphans and not result.orphans_note:
        with steps.step("remove the orphan folders (--apply)") as row:
            root = settings.artifacts_dir.resolve()
            for orphan in result.orphans:
                path = Path(orphan["path"]).resolve()
                if root in path.parents:
                    shutil.rmtree(path, ignore_errors=True)
                    result.orphans_removed.append(orphan)
            row.detail = f"{len(result.orphans_removed)} removed"
    return result


def _run_gc(settings: Settings, result: GcResult, steps: StepTable) -> None:
    store_uri, env = store_uri_and_password_env(settings)
    proxied = any((i.uri or "").startswith("mlflow-artifacts:") for i in result.items)
    every_workspace = settings.server.workspaces or bool(result.workspaces)
    helper: ArtifactsServer | None = None
    tracking = store_uri
    if proxied:
        ours = running_record(settings)
        if ours:
            tracking, result.server = ours.url, f"our server (pid {ours.pid})"
        else:
            helper_settings = settings.model_copy(deep=True)
            helper_settings.server.workspaces = every_workspace
            helper_settings.server.host = "127.0.0.1"
            helper_settings.artifacts.artifacts_server.port = free_port()
            helper = ArtifactsServer(helper_settings, name=HELPER)
            with steps.step(
                "start a temporary artifacts-only server", if_interrupted="nothing removed yet", dirty=False
            ) as row:
                began = time.monotonic()
                helper.start()
                tracking, result.server = helper.url, f"a temporary artifacts-only server on {helper.url}"
                row.detail = f"{time.monotonic() - began:.1f} s"
    flags = ["--all-workspaces"] if every_workspace else []
    try:
        with steps.step(
            f"mlflow gc --older-than {result.older_than}{' --all-workspaces' if flags else ''}",
            if_interrupted="mlflow gc removes run by run, each in its own transaction: some are gone, the rest are not; run `inv db.gc` again",
        ) as row:
            child_env = {**env, "MLFLOW_TRACKING_URI": tracking, **client_env(settings)}
            run_mlflow(
                installed(),
                ["gc", "--backend-store-uri", store_uri, "--older-than", result.older_than, *flags],
                settings=settings,
                env=child_env,
                what="mlflow gc",
            )
            row.detail = f"artifacts deleted through {result.server or 'the store URI (no proxied artifacts)'}"
    finally:
        if helper is not None:
            helper.stop()
    with steps.step(
        "read back what was removed", if_interrupted="mlflow gc finished; only its check was cut short", dirty=False
    ) as row:
        _read_back(settings, result)
        row.detail = f"{len(result.removed)} removed, {len(result.still_there)} still there"
    if result.still_there:
        first = result.still_there[0]
        raise UserError(
            f"mlflow gc left {len(result.still_there)} planned item(s) in the store (first: {first.kind} {first.id}); see its log"
        )


def _read_back(settings: Settings, result: GcResult) -> None:
    queries = {
        "run": "SELECT 1 FROM runs WHERE run_uuid = :i",
        "experiment": "SELECT 1 FROM experiments WHERE experiment_id = :i",
        "logged model": "SELECT 1 FROM logged_models WHERE model_id = :i",
    }
    with open_store(backend_store_uri(settings, reveal=True)) as store:
        for item in result.items:
            key = int(item.id) if item.kind == "experiment" else item.id
            (result.still_there if store.scalar(queries[item.kind], {"i": key}) else result.removed).append(item)
    for item in result.removed:  # mlflow gc deletes the artifacts; the folders that held them stay, empty
        folder = _folder(item, settings.artifacts_dir)
        for candidate in (folder.parent if folder and folder.name == "artifacts" else None, folder):
            if candidate is not None and candidate.is_dir() and tree_size(candidate)[1] == 0:
                shutil.rmtree(candidate, ignore_errors=True)


def orphans(settings: Settings, other: Settings | None) -> tuple[list[dict], str]:
    """Folders no row of this store (nor of the other backend's store) claims; and why none may go, if so."""
    with open_store(backend_store_uri(settings, reveal=True)) as store:
        found = artifact_sizes(store, settings.artifacts_dir).get("orphan_folders", [])
    if not found or other is None:
        return found, ""
    try:
        other_uri = _other_store_uri(other)
    except UserError as exc:
        return found, str(exc)
    if other_uri is None:
        return found, ""
    with open_store(other_uri) as store:
        theirs = {o["path"] for o in artifact_sizes(store, settings.artifacts_dir).get("orphan_folders", [])}
    # a folder the other store owns is not an orphan there; a parent of its orphans is not ours to take whole
    return [o for o in found if o["path"] in theirs], ""


def _other_store_uri(other: Settings) -> str | None:
    """The other backend's store URI when it holds a store; None when it has none; UserError when unknown."""
    if other.backend == "sqlite":
        return backend_store_uri(other) if other.sqlite_file.is_file() and other.sqlite_file.stat().st_size else None
    try:
        uri = backend_store_uri(other, reveal=True)
    except ConfigError:
        return None  # PostgreSQL was never set up in this state dir: no store there
    problem = check_reachable(other)
    if problem is None:
        try:
            with open_store(uri):
                return uri
        except UserError:
            return None  # an empty database, or not an MLflow store: claims no folder
    if "does not exist" in problem:
        return None
    raise UserError(
        f"orphan folders are kept: the artifact folder is shared with the postgres store, which cannot be read "
        f"({problem}); `inv db.start` and run again"
    )
