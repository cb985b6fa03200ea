"""mlflow-ops: run, prove, inspect and benchmark a self-hosted MLflow tracking server."""

import datetime as dt
import signal
from pathlib import Path

# Invoke imports this file as module `tasks`, which would hide the tasks/ folder; making
# this module a package whose path is tasks/ lets `from tasks import db` work under both
# `inv` and pytest (tasks/ has no __init__.py on purpose).
__path__ = [str(Path(__file__).resolve().parent / "tasks")]

from invoke import Collection, task  # noqa: E402
from invoke.exceptions import Exit  # noqa: E402

from tasks import bench, config, db, inspect_store, install, server, testing  # noqa: E402
from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors  # noqa: E402


@task(name="full-check", help={
    "backend": "sqlite or postgres: only this backend (default both)",
    "keep": "leave the database and server running afterwards",
    "report_dir": "where the report goes (default <state_dir>/reports/full-check-<time>)",
    "preset": "workload preset from benchmarks/workload.yaml (default quick)",
    "profile": PROFILE_HELP, "config": CONFIG_HELP})
def full_check(c, backend=None, keep=False, report_dir=None, preset=None, profile=None, config=None):
    """Start PostgreSQL and the server, run the workload, checks and inspection per backend."""
    from tasks.pipeline import run_full_check, stage_table, workload_table

    with user_errors():
        settings = settings_from(profile, config).settings
        backends = [backend] if backend else ["postgres", "sqlite"]
        for name in backends:
            settings_from(profile, config, backend=name)  # validates the name, one clear line
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(report_dir) if report_dir else settings.state_path / "reports" / f"full-check-{stamp}"
    # SIGTERM (a CI runner giving up) takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = run_full_check(settings, backends=backends, keep=keep, report_dir=out, preset=preset or "quick")
    print("\n" + stage_table(report) + "\n\n" + workload_table(report))
    print(f"\nfull-check took {report.wall_s:.1f} s; report in {out}")
    if report.failed:
        raise Exit("full-check FAILED: " + "; ".join(f"[{s.backend}] {s.name}: {s.detail}" for s in report.failed),
                   code=1)


ns = Collection()
for module in (bench, config, db, server):
    ns.add_collection(Collection.from_module(module))
ns.add_collection(Collection.from_module(testing, name="test"))
ns.add_collection(Collection.from_module(inspect_store, name="inspect"))
ns.add_task(install.deps)
ns.add_task(full_check)
