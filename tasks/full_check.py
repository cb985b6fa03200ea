"""`full-check`: the pipeline CI runs: PostgreSQL, then per backend the server, the workload,
the deployment checks, the inspection and the security probes."""

import signal

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.pipeline.full_check import (
    BACKENDS,
    run_full_check,
    stage_table,
    workload_table,
)
from tasks.libs.reporting.writers import report_dir_for


@task(
    help={
        "backend": "sqlite or postgres: only this backend (default both)",
        "keep": "leave the database and server running afterwards",
        "report_dir": "where the report goes (default <state_dir>/reports/full-check-<time>)",
        "preset": "workload preset from benchmarks/workload.yaml (default quick)",
        "cluster": "also bring up 2 replicas behind HAProxy on PostgreSQL and check through the load balancer (adds ~1-2 min)",
        "profile": PROFILE_HELP,
        "config": CONFIG_HELP,
    }
)
def full_check(c, backend=None, keep=False, report_dir=None, preset=None, cluster=False, profile=None, config=None):
    """Start PostgreSQL and the server, run the workload, checks, inspection and security probes per backend."""
    backends = [backend] if backend else list(BACKENDS)
    with user_errors():
        # Each backend's own layered settings: what `inv server.start --backend X` would run.
        per_backend = {name: settings_from(profile, config, backend=name).settings for name in backends}
        on_cluster = settings_from(profile, config, backend="postgres").settings if cluster else None
        out = report_dir_for(next(iter(per_backend.values())), "full-check", report_dir)
    # SIGTERM (a CI runner giving up) takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = run_full_check(per_backend, keep=keep, report_dir=out, preset=preset or "quick", cluster=on_cluster)
    print("\n" + stage_table(report) + "\n\n" + workload_table(report))
    print(f"\nfull-check took {report.wall_s:.1f} s; report in {out}")
    if report.failed:
        raise Exit(
            "full-check FAILED: " + "; ".join(f"[{s.backend}] {s.name}: {s.detail}" for s in report.failed), code=1
        )
