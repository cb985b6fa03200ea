"""mlflow-ops: run, prove, inspect and benchmark a self-hosted MLflow tracking server."""

from pathlib import Path

# Invoke finds this file before tasks/__init__.py and imports it as module `tasks`, which
# would hide the tasks/ folder; giving this module the folder as its path lets `from tasks
# import db` work under `inv`. Python, pytest, editors and type checkers import tasks/ itself
# (its __init__.py), so both see the same modules.
__path__ = [str(Path(__file__).resolve().parent / "tasks")]

from invoke import Collection

from tasks import bench, cluster, config, db, deploy, deps, engine, full_check, inspect, server, test

ns = Collection()
for module in (bench, cluster, config, db, deploy, engine, inspect, server, test):
    ns.add_collection(Collection.from_module(module))
ns.add_task(deps.deps)
ns.add_task(full_check.full_check)
