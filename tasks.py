"""mlflow-ops: run, prove, inspect and benchmark a self-hosted MLflow tracking server."""

from pathlib import Path

# Invoke imports this file as module `tasks`, which would hide the tasks/ folder; making
# this module a package whose path is tasks/ lets `from tasks import db` work under both
# `inv` and pytest (tasks/ has no __init__.py on purpose).
__path__ = [str(Path(__file__).resolve().parent / "tasks")]

from invoke import Collection  # noqa: E402

from tasks import config, db, server  # noqa: E402

ns = Collection()
for module in (config, db, server):
    ns.add_collection(Collection.from_module(module))
