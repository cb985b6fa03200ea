"""`bench` collection: SQLite vs PostgreSQL, our set-up vs stock MLflow, measured side by side."""

from datetime import datetime
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.bench import report as bench_report
from tasks.libs.bench import scale_report
from tasks.libs.bench.cluster import cluster_table, run_cluster_bench, write_cluster_outputs
from tasks.libs.bench.runner import BACKENDS, run_bench, stderr_progress
from tasks.libs.bench.scale import run_scale
from tasks.libs.bench.scale_spec import load_scale_spec
from tasks.libs.bench.workload import load_spec
from tasks.libs.core.errors import UserError
from tasks.libs.reporting.formats import table

RUN_HELP = {
    "backends": "comma-separated backends to bench (default sqlite,postgres)",
    "preset": "preset from benchmarks/workload.yaml: quick (about 8 min on 2 cores), full, or scale (cost as the store grows: 10^4/10^5 runs, a 10^6-point metric, traces, a 1 GiB artifact; 30-40 min)",
    "out": "folder to write <timestamp>/ results into (default benchmarks/results)",
    "client_mode": "process (default) or thread: how the concurrent clients run",
    "target": "servers (default: each backend, tuned vs stock) or cluster: replicas behind HAProxy vs one server",
    "replicas": "with --target cluster: how many replicas (default cluster.replicas)",
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
}


@task(default=True, help=RUN_HELP)
def run(
    c, backends=None, preset=None, out=None, client_mode=None, target=None, replicas=None, profile=None, config=None
):
    """Time the logging workload on each backend, tuned vs stock server (or a cluster vs one server)."""
    if (target or "servers") == "cluster":
        _run_cluster(preset, out, client_mode, replicas, profile, config)
        return
    with user_errors():
        if (target or "servers") != "servers":
            raise UserError(f"--target must be servers or cluster, not {target!r}")
        names = list(dict.fromkeys(b.strip() for b in (backends or ",".join(BACKENDS)).split(",") if b.strip()))
        if unknown := [b for b in names if b not in BACKENDS]:
            raise UserError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        scale = load_scale_spec(preset or "quick")
        if scale is not None:
            per_backend = {name: settings_from(profile, config, backend=name).settings for name in names}
            doc = run_scale(per_backend, spec=scale)
    if scale is not None:
        folder = scale_report.write_outputs(doc, out)
        print(scale_report.terminal_report(doc))
        print(f"\nresults: {folder}/ ({', '.join(scale_report.FILES)})")
        return
    with user_errors():
        spec = load_spec(preset or "quick")
        if (client_mode or "process") not in ("process", "thread"):
            raise UserError(f"--client-mode must be process or thread, not {client_mode!r}")
        # Each backend's own layered settings: what `inv server.start --backend B` runs.
        per_backend = {name: settings_from(profile, config, backend=name).settings for name in names}
        doc = run_bench(per_backend, spec=spec, client_mode=client_mode or "process")
    folder = bench_report.write_outputs(doc, out)
    print(bench_report.terminal_report(doc))
    print(f"\nresults: {folder}/ ({', '.join(bench_report.FILES)})")


def _run_cluster(preset, out, client_mode, replicas, profile, config):
    with user_errors():
        settings = settings_from(profile, config, backend="postgres", **{"cluster.replicas": replicas}).settings
        doc = run_cluster_bench(
            settings,
            spec=load_spec(preset or "quick"),
            replicas=settings.cluster.replicas,
            client_mode=client_mode or "process",
            progress=stderr_progress(),
        )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = write_cluster_outputs(doc, Path(out or bench_report.RESULTS_ROOT) / f"{stamp}-cluster")
    print(cluster_table(doc))
    print(f"\nresults: {folder}/ (results.json, report.md)")


@task(
    positional=["a", "b"],
    help={"a": "the baseline results folder (or its results.json)", "b": "the results folder to compare against A"},
)
def compare(c, a=None, b=None):
    """Compare two bench result folders cell by cell (B against A)."""
    if not a or not b:
        raise Exit("error: give two result folders: inv bench.compare A B", code=1)
    try:
        first, second = bench_report.load_results(a), bench_report.load_results(b)
    except (FileNotFoundError, ValueError) as exc:
        raise Exit(f"error: {exc}", code=1) from None
    rows = bench_report.compare(first, second)
    if not rows:
        raise Exit("error: the two results share no (backend, set-up, clients, op) cell", code=1)
    print(f"A: {a} ({first['meta']['preset']}, {first['meta']['started_at']})")
    print(f"B: {b} ({second['meta']['preset']}, {second['meta']['started_at']})")
    print(table(rows, bench_report.COMPARE_HEADERS))
    footprint = bench_report.compare_footprint(first, second)
    if footprint:
        print("\n" + table(footprint, bench_report.COMPARE_FOOTPRINT_HEADERS))
