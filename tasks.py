"""mlflow-ops: run, prove, inspect and benchmark a self-hosted MLflow tracking server."""

from pathlib import Path

# Invoke imports this file as module `tasks`, which would hide the tasks/ folder; making
# this module a package whose path is tasks/ lets `from tasks import db` work under both
# `inv` and pytest (tasks/ has no __init__.py on purpose).
__path__ = [str(Path(__file__).resolve().parent / "tasks")]

from invoke import Collection

from tasks import bench, cluster, config, db, deploy, deps, full_check, inspect, server, test

ns = Collection()
for module in (bench, cluster, config, db, deploy, inspect, server, test):
    ns.add_collection(Collection.from_module(module))
ns.add_task(deps.deps)
ns.add_task(full_check.full_check)
