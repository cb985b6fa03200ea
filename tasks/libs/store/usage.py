"""The artifact tree on disk measured against the store: sizes, orphan folders, missing folders.

The server runs with --artifacts-destination <dir>, so a run's artifact_uri
mlflow-artifacts:/<exp_id>/<run_id>/artifacts lives in <dir>/<exp_id>/<run_id>/artifacts.
MLflow 3 also keeps logged models in <dir>/<exp_id>/models/<model_id> and trace data in
<dir>/<exp_id>/traces/<trace_id>; those folders belong to logged_models and trace_info rows.
With workspaces, an experiment of a workspace other than 'default' lives one level deeper, in
<dir>/workspaces/<name>/<exp_id>: a folder on the way to an experiment's is no orphan.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tasks.libs.artifacts.s3 import BucketView
from tasks.libs.store.reader import StoreReader

# Sub-folders of an experiment folder that hold other entities than runs: table, id column.
ENTITY_FOLDERS = {"models": ("logged_models", "model_id"), "traces": ("trace_info", "request_id")}


def local_artifact_path(uri: str | None, artifacts_dir: Path | None) -> Path | None:
    """Where an artifact URI lives on this disk: mlflow-artifacts:/x -> <artifacts_dir>/x, file:///x -> /x.

    None for a remote store (s3://, ...), or for mlflow-artifacts: when no artifacts_dir is known.
    """
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "mlflow-artifacts":
        return Path(artifacts_dir) / unquote(parsed.path).lstrip("/") if artifacts_dir else None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and os.path.isabs(uri):
        return Path(uri)
    return None


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under path, symlinks not followed."""
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except FileNotFoundError:  # removed while we walked
                pass
    return total, files


def artifact_sizes(store: StoreReader, artifacts_dir: str | Path | None, *, limit: int = 50) -> dict[str, Any]:
    """Per experiment and run sizes, folders no row owns, and runs whose folder is missing."""
    if artifacts_dir is None:
        return {"artifacts_dir": None, "note": "no artifacts directory given"}
    root = Path(artifacts_dir).expanduser().resolve()
    if not root.is_dir():
        return {"artifacts_dir": str(root), "note": "artifacts directory does not exist"}

    tables = set(store.tables())
    experiments = {str(e): loc for e, loc in store.rows("SELECT experiment_id, artifact_location FROM experiments")}
    runs = store.rows(
        "SELECT run_uuid, experiment_id, artifact_uri, lifecycle_stage FROM runs ORDER BY start_time DESC"
    )
    owned: set[Path] = set()  # folders some row claims
    run_entries, missing, remote = [], [], 0
    for run_id, exp_id, uri, stage in runs:
        path = local_artifact_path(uri, root)
        if path is None:
            remote += 1
            continue
        folder = path.parent if path.name == "artifacts" else path
        owned.add(folder)
        if path.is_dir():
            size, files = tree_size(folder)
            run_entries.append(
                {
                    "experiment_id": exp_id,
                    "run_id": run_id,
                    "bytes": size,
                    "files": files,
                    "deleted": stage == "deleted",
                }
            )
        else:
            missing.append({"experiment_id": exp_id, "run_id": run_id, "expected": str(path)})
    for folder_name, (table, id_column) in ENTITY_FOLDERS.items():
        if table in tables:
            for entity_id, exp_id in store.rows(f"SELECT {id_column}, experiment_id FROM {table}"):
                exp_path = local_artifact_path(experiments.get(str(exp_id)), root)
                if exp_path is not None:
                    owned.add(exp_path / folder_name / str(entity_id))

    experiment_paths = {}
    for exp_id, loc in experiments.items():
        path = local_artifact_path(loc, root)
        if path is not None:
            experiment_paths[path] = exp_id
    # Folders between the root and an experiment's folder (workspaces/, workspaces/<name>/) are walked through.
    on_the_way = {p for path in experiment_paths for p in path.parents if root in p.parents}
    per_experiment, orphans = [], []
    pending = sorted(_subdirs(root))
    while pending:
        child = pending.pop(0)
        if child not in experiment_paths and child in on_the_way:
            pending[:0] = sorted(_subdirs(child))
            continue
        if child not in experiment_paths:
            size, files = tree_size(child)
            orphans.append({"path": str(child), "kind": "no experiment", "bytes": size, "files": files})
            continue
        size, files = tree_size(child)
        per_experiment.append({"experiment_id": experiment_paths[child], "bytes": size, "files": files})
        for sub in sorted(_subdirs(child)):
            candidates = _subdirs(sub) if sub.name in ENTITY_FOLDERS else [sub]
            for folder in sorted(candidates):
                if folder not in owned:
                    size, files = tree_size(folder)
                    kind = f"no {ENTITY_FOLDERS[sub.name][0]} row" if sub.name in ENTITY_FOLDERS else "no run"
                    orphans.append({"path": str(folder), "kind": kind, "bytes": size, "files": files})

    run_entries.sort(key=lambda r: -r["bytes"])
    total, files = tree_size(root)
    return {
        "artifacts_dir": str(root),
        "total_bytes": total,
        "files": files,
        "per_experiment": per_experiment,
        "per_run": run_entries[:limit],
        "runs_not_shown": max(0, len(run_entries) - limit),
        "orphan_folders": orphans,
        "runs_missing_folder": missing[:limit],
        "runs_missing_folder_count": len(missing),
        "runs_with_remote_artifacts": remote,
    }


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return []


def bucket_sizes(store: StoreReader, bucket: BucketView, *, limit: int = 50) -> dict[str, Any]:
    """The S3 counterpart of artifact_sizes: objects and bytes per experiment and run, read from
    one listing of the bucket's prefix, and experiment folders no experiment row owns."""
    objects = dict(bucket.objects())
    experiments = {str(e) for (e,) in store.rows("SELECT experiment_id FROM experiments")}
    per_experiment: dict[str, list[int]] = {}
    for key, size in objects.items():
        entry = per_experiment.setdefault(bucket.experiment_of(key), [0, 0])
        entry[0] += 1
        entry[1] += size
    run_entries, elsewhere = [], 0
    runs = store.rows(
        "SELECT run_uuid, experiment_id, artifact_uri, lifecycle_stage FROM runs ORDER BY start_time DESC"
    )
    for run_id, exp_id, uri, stage in runs:
        run_key = bucket.key_for(uri)
        if run_key is None:
            elsewhere += 1
            continue
        folder = run_key.removesuffix("/artifacts") + "/"
        sizes = [size for k, size in objects.items() if k.startswith(folder)]
        if sizes:
            run_entries.append(
                {
                    "experiment_id": exp_id,
                    "run_id": run_id,
                    "bytes": sum(sizes),
                    "objects": len(sizes),
                    "deleted": stage == "deleted",
                }
            )
    run_entries.sort(key=lambda r: -r["bytes"])
    return {
        "bucket": bucket.uri,
        "total_bytes": sum(objects.values()),
        "objects": len(objects),
        "per_experiment": [
            {"experiment_id": e, "bytes": v[1], "objects": v[0], "owned": e in experiments}
            for e, v in sorted(per_experiment.items())
        ],
        "per_run": run_entries[:limit],
        "runs_not_shown": max(0, len(run_entries) - limit),
        "runs_with_artifacts_elsewhere": elsewhere,
    }
