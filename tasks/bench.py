"""`bench` collection: SQLite vs PostgreSQL, our set-up vs stock MLflow, measured side by side."""

from invoke import task
from invoke.exceptions import Exit
from tabulate import tabulate

from tasks import bench_report
from tasks.bench_runner import BACKENDS, run_bench
from tasks.cli import CONFIG_HELP, PROFILE_HELP, UserError, settings_from, user_errors
from tasks.workload import SpecError, load_spec

RUN_HELP = {
    "backends": "comma-separated backends to bench (default sqlite,postgres)",
    "preset": "workload preset from benchmarks/workload.yaml: quick (< 3 min) or full (< 15 min)",
    "out": "folder to write <timestamp>/ results into (default benchmarks/results)",
    "client_mode": "process (default) or thread: how the concurrent clients run",
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
}


@task(default=True, help=RUN_HELP)
def run(c, backends=None, preset=None, out=None, client_mode=None, profile=None, config=None):
    """Time the logging workload on each backend, tuned vs stock server, and write the report."""
    with user_errors():
        names = [b.strip() for b in (backends or ",".join(BACKENDS)).split(",") if b.strip()]
        try:
            spec = load_spec(preset or "quick")
        except SpecError as exc:
            raise UserError(str(exc)) from None
        if (client_mode or "process") not in ("process", "thread"):
            raise UserError(f"--client-mode must be process or thread, not {client_mode!r}")
        base = settings_from(profile, config).settings
        doc = run_bench(backends=names, spec=spec, base=base, client_mode=client_mode or "process")
    folder = bench_report.write_outputs(doc, out)
    print(bench_report.terminal_report(doc))
    print(f"\nresults: {folder}/ ({', '.join(bench_report.FILES)})")


@task(positional=["a", "b"], help={"a": "the baseline results folder (or its results.json)",
            "b": "the results folder to compare against A"})
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
    print(tabulate(rows, headers=bench_report.COMPARE_HEADERS, disable_numparse=True))
