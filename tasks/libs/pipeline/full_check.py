"""`full-check`: database, server, workload, deployment checks, inspection and security probes, per backend.

Everything runs in a state directory of its own (<state_dir>/full-check) on free ports,
with its own PostgreSQL cluster (or container), so a user's running server and database
are never touched, and two runs in a row start from the same clean slate.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.libs.artifacts.s3 import where_artifacts_are
from tasks.libs.bench.clients import ClientPool, prepare_experiments, run_workload
from tasks.libs.bench.workload import load_spec
from tasks.libs.checks.runner import run_checks
from tasks.libs.checks.storage import storage_arguments
from tasks.libs.cluster.orchestrate import cluster_down
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import Settings
from tasks.libs.core.state import STATE_DIR_MODE, ensure_state_dir
from tasks.libs.pipeline.cluster_stage import (
    checks_through_the_balancer,
    isolated_cluster,
    start_cluster,
    write_here_read_there,
)
from tasks.libs.postgres.connection import recreate_database
from tasks.libs.postgres.providers import Provider, provider_for
from tasks.libs.reporting.formats import number, table
from tasks.libs.reporting.writers import write_reports
from tasks.libs.security.suite import run_security, verdict
from tasks.libs.security.target import target_from_settings
from tasks.libs.server.auth import client_env
from tasks.libs.server.control import start_server, stop_server
from tasks.libs.store.inspection import inspect_store, section_errors
from tasks.libs.store.integrity import integrity_problems

BACKENDS = ("postgres", "sqlite")


@dataclass
class Stage:
    backend: str
    name: str
    status: str = "ok"  # ok | FAIL | skipped
    seconds: float = 0.0
    detail: str = ""


@dataclass
class PipelineReport:
    stages: list[Stage] = field(default_factory=list)
    workload: dict[str, dict] = field(default_factory=dict)  # backend -> op -> stats
    report_dir: str = ""
    wall_s: float = 0.0

    @property
    def failed(self) -> list[Stage]:
        return [s for s in self.stages if s.status == "FAIL"]


def isolated_settings(per_backend: dict[str, Settings]) -> dict[str, Settings]:
    """Each backend's settings moved into <state_dir>/full-check, with free ports and names of
    its own (shared by the backends: one state dir, one PostgreSQL)."""
    first = next(iter(per_backend.values()))
    state_dir = str(first.state_path / "full-check")
    server_port, pg_port = free_port(first.server.host), free_port(first.postgres.host)
    s3_port, artifacts_server_port = free_port(), free_port()  # never a user's embedded S3 on 3115
    isolated = {}
    for backend, base in per_backend.items():
        settings = base.model_copy(deep=True, update={"state_dir": state_dir})
        settings.server.port, settings.postgres.port = server_port, pg_port
        settings.artifacts.s3.port, settings.artifacts.artifacts_server.port = s3_port, artifacts_server_port
        settings.postgres.database = "mlflow_full_check"
        settings.postgres.docker.container += "-full-check"
        settings.postgres.docker.volume += "-full-check"
        settings.sqlite.path = None
        isolated[backend] = settings
    return isolated


def run_full_check(
    per_backend: dict[str, Settings],
    *,
    keep: bool = False,
    report_dir: Path,
    preset: str = "quick",
    browser: str | None = None,
    say: Callable[[str], None] = print,
    cluster: Settings | None = None,
) -> PipelineReport:
    """Run every stage per backend (each with its own layered settings), then, given cluster (the
    PostgreSQL layered settings), the cluster stage; stop all we started (also on failure or
    Ctrl-C) unless keep."""
    began = time.monotonic()
    report = PipelineReport(report_dir=str(report_dir))
    isolated = isolated_settings(per_backend)
    any_settings = next(iter(isolated.values()))
    pg_port = any_settings.postgres.port
    on_cluster = isolated_cluster(cluster, any_settings.state_dir, pg_port) if cluster else None
    os.environ.update(client_env(any_settings))  # workload and check clients sign in when auth is on
    if on_cluster:
        cluster_down(on_cluster)  # what an earlier --keep run left
    _clean_slate(isolated)
    report_dir.mkdir(parents=True, exist_ok=True)
    spec = load_spec(preset)
    db: Provider | None = None
    try:
        for backend, current in isolated.items():
            if backend == "postgres":
                db = _stage(report, backend, "db.start", say, lambda: _start_db(current))
                if db is None:
                    continue
            url = current.server.url
            if _stage(report, backend, "server.start", say, lambda: _start_server(current)) is None:
                continue
            try:
                _stage(report, backend, "workload", say, lambda: _workload(report, backend, url, spec))
                _stage(
                    report, backend, "deployment checks", say, lambda: _checks(current, report_dir / backend, browser)
                )
                _stage(report, backend, "inspect", say, lambda: _inspect(current, report_dir / backend))
                _stage(report, backend, "security", say, lambda: _security(current, report_dir, backend))
            finally:
                if not keep:
                    _stage(report, backend, "server.stop", say, lambda: stop_server(current))
        if on_cluster:
            db = _cluster_stages(report, on_cluster, db, report_dir, browser, keep, say)
    finally:
        if not keep:
            if on_cluster:
                cluster_down(on_cluster)  # what an interrupted stage left
            if db is not None:
                db.stop()
            stop_server(any_settings)  # a server left by an interrupted stage
        report.wall_s = time.monotonic() - began
        write_pipeline_report(report, report_dir)
    return report


def _cluster_stages(report, settings: Settings, db: Provider | None, report_dir: Path, browser, keep, say):
    """The cluster stage; returns the database provider (started here when no backend stage did)."""
    if db is None:
        db = _stage(report, "cluster", "db.start", say, lambda: _start_db(settings))
        if db is None:
            return None
    if _stage(report, "cluster", "cluster.up", say, lambda: start_cluster(settings)) is not None:
        _stage(report, "cluster", "write here, read there", say, lambda: write_here_read_there(settings))
        _stage(
            report,
            "cluster",
            "deployment checks",
            say,
            lambda: checks_through_the_balancer(settings, report_dir / "cluster", browser),
        )
    if not keep:
        _stage(report, "cluster", "cluster.down", say, lambda: "; ".join(cluster_down(settings)[:2]) + " ...")
    return db


def _stage(report: PipelineReport, backend: str, name: str, say, action):
    """Run one stage, record ok/FAIL with its duration; return the action's value (None on FAIL)."""
    stage = Stage(backend, name)
    report.stages.append(stage)
    say(f"[{backend}] {name} ...")
    started = time.monotonic()
    try:
        value = action()
        stage.detail = value if isinstance(value, str) else ""
        return value if value is not None else True
    except UserError as exc:
        stage.status, stage.detail = "FAIL", str(exc).splitlines()[0]
    except Exception as exc:  # a stage's bug must not leave processes behind; keep the trace
        stage.status = "FAIL"
        stage.detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        (Path(report.report_dir) / f"{backend}-{name.replace(' ', '-')}-traceback.txt").write_text(
            traceback.format_exc()
        )
    finally:
        stage.seconds = time.monotonic() - started
        say(f"[{backend}] {name}: {stage.status} ({stage.seconds:.1f} s) {stage.detail}".rstrip())
    return None


def _start_db(settings: Settings) -> Provider:
    db = provider_for(settings)
    db.start()
    recreate_database(settings)  # a fresh store every run
    return db


def _start_server(settings: Settings) -> str:
    result = start_server(settings)
    return f"ready in {result.seconds:.1f} s at {settings.server.url}"


def _workload(report: PipelineReport, backend: str, url: str, spec) -> str:
    with ClientPool(1, request_timeout_s=spec.request_timeout_s) as pool:
        exp_id, seed_id = prepare_experiments(url, spec, label="full-check")
        # untimed first: the cold paths (imports, first connections) are not what we measure
        run_workload(url, spec, clients=1, pool=pool, ops=spec.warmup, experiment_id=exp_id, seed_experiment_id=seed_id)
        result = run_workload(url, spec, clients=1, pool=pool, experiment_id=exp_id, seed_experiment_id=seed_id)
    report.workload[backend] = result.summary()
    if result.errors:
        raise UserError(f"{result.errors} workload call(s) failed")
    return f"{sum(len(r.latencies) for r in result.ops.values())} calls in {result.wall_s:.1f} s"


def _checks(settings: Settings, out_dir: Path, browser) -> str:
    kwargs = {} if browser is None else {"browser": browser}
    result = run_checks(
        settings.server.url,
        report_dir=out_dir,
        store_uri=backend_store_uri(settings, reveal=True),
        **storage_arguments(settings),
        cleanup=False,
        **kwargs,
    )
    write_reports(result, out_dir)
    if result.failed:
        raise UserError("failed: " + ", ".join(f"{c.name} ({c.reason})" for c in result.failed))
    return f"{len(result.checks)} checks, none failed"


def _inspect(settings: Settings, out_dir: Path) -> str:
    found = inspect_store(backend_store_uri(settings, reveal=True), where_artifacts_are(settings))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inspect.json").write_text(json.dumps(found, indent=2, default=str))
    errors = section_errors(found)
    if errors:
        raise UserError("unreadable: " + "; ".join(errors))
    problems = integrity_problems(found["integrity"])
    if problems:
        raise UserError(f"{backend_store_uri(settings)}: " + "; ".join(problems))
    return "store sound"


def _security(settings: Settings, report_dir: Path, backend: str) -> str:
    """The security probes against the server this pipeline started (writes allowed: it is ours);
    the secrets probe also reads this run's reports."""
    target = target_from_settings(settings, report_roots=(report_dir,))
    if not target.owned:
        raise UserError(f"no server of ours runs at {settings.server.url}; nothing to probe")
    out_dir = report_dir / backend / "security"
    result = run_security(target, report_dir=out_dir)
    write_reports(result, out_dir)
    if result.failed:
        raise UserError("failed: " + verdict(result))
    counts = result.counts()
    return f"{counts['PASS']} probes passed, {counts['SKIPPED']} skipped ({target.requests_sent} requests)"


def _clean_slate(isolated: dict[str, Settings]) -> None:
    """Stop what an earlier --keep run left in our own state dir, then start from nothing."""
    settings = isolated.get("postgres") or next(iter(isolated.values()))
    stop_server(settings)
    if (settings.state_path / "postgres").exists() or settings.postgres.provider in ("docker", "auto"):
        with contextlib.suppress(UserError):
            provider_for(settings).stop()
    for name in ("server", "artifacts", "mlflow.db", "mlflow.db-wal", "mlflow.db-shm"):
        path = settings.state_path / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    # Wholly ours: its mode is the tool's, whatever made it first (the security stage checks it).
    ensure_state_dir(settings).chmod(STATE_DIR_MODE)


def write_pipeline_report(report: PipelineReport, report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "full-check.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    (report_dir / "full-check.md").write_text(
        f"# full-check\n\nwall time: {report.wall_s:.1f} s\n\n## Stages\n\n"
        + stage_table(report, markdown=True)
        + "\n\n## Workload (quick preset, 1 client)\n\n"
        + workload_table(report, markdown=True)
        + "\n"
    )


def stage_table(report: PipelineReport, *, markdown: bool = False) -> str:
    rows = [(s.backend, s.name, s.status, f"{s.seconds:.1f}", s.detail[:90]) for s in report.stages]
    return table(rows, ["backend", "stage", "result", "seconds", "detail"], markdown=markdown)


def workload_table(report: PipelineReport, *, markdown: bool = False) -> str:
    rows = []
    for backend, ops in report.workload.items():
        for op, stats in ops.items():
            rows.append(
                (
                    backend,
                    op,
                    stats["n"],
                    number(stats["p50_ms"]),
                    number(stats["p95_ms"]),
                    f"{stats['throughput']:.1f}",
                    stats["errors"],
                )
            )
    return table(rows, ["backend", "operation", "calls", "p50 ms", "p95 ms", "calls/s", "errors"], markdown=markdown)
