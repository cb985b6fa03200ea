"""Orchestrate `inv bench`: backends x set-ups, each on a fresh store, timed interleaved.

Set-ups (see server.command):
  tuned  what `inv server.start --backend B` runs: B's own layered settings.
  stock  `mlflow server` as MLflow's docs show it, run as a plain `pip install mlflow` runs it.

Every set-up gets its own state dir under /tmp (mode 0755, so the postgres OS user can
enter it), free ports, and a fresh store: its own SQLite file, or its own database on one
throwaway local PostgreSQL cluster. All servers start together and are ready (migrations
done) before timing; then the cells run interleaved, repetition by repetition, so drift
and the noise of other work on the machine fall on every set-up alike.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import SecretStr

from tasks.libs.bench import raw as bench_raw
from tasks.libs.bench.clients import ClientPool, prepare_experiments, run_workload
from tasks.libs.bench.footprint import Footprint, PeakSampler, measure_startups
from tasks.libs.bench.stats import (
    cell_stats,
    compare_cells,
    evaluate_targets,
    footprint_stats,
    mlflow_vs_raw,
)
from tasks.libs.bench.workload import OPS, ROWS_PER_CALL, WorkloadSpec
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.databases import sqlite_journal_mode
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import trust_bundle, trust_for_clients
from tasks.libs.core.venvs import pip_freeze, venvs_dir
from tasks.libs.postgres.connection import pg_connection, recreate_database
from tasks.libs.postgres.providers import provider_for
from tasks.libs.server.command import ensure_stock_venv, server_command, server_env, stock_requirements
from tasks.libs.server.control import ServerPaths, ServerRecord, start_server, stop_server

BACKENDS = ("sqlite", "postgres")
SETUPS = ("tuned", "stock")


@dataclass
class Target:
    backend: str
    setup: str
    settings: Settings
    experiment_id: str = ""
    seed_experiment_id: str = ""
    reps: dict = field(default_factory=dict)  # (clients, op) -> [rep dicts]
    footprint: Footprint = field(default_factory=Footprint)

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.setup}"

    @property
    def url(self) -> str:
        return self.settings.server.url

    @property
    def stock(self) -> bool:
        return self.setup == "stock"


def run_bench(
    per_backend: dict[str, Settings],
    *,
    spec: WorkloadSpec,
    client_mode: str = "process",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the whole comparison and return the results document (see bench.report).

    per_backend holds each backend's layered settings (what `server.start --backend B` loads).
    """
    backends = list(per_backend)
    progress = progress or stderr_progress()
    base = next(iter(per_backend.values()))
    stock_python = ensure_stock_venv(base, say=progress)  # once, cached under the user's state dir
    root = Path(tempfile.mkdtemp(prefix="mlflow-ops-bench-", dir="/tmp"))
    root.chmod(0o755)
    started_at, began = datetime.now(timezone.utc), time.monotonic()
    password = secrets.token_urlsafe(18)
    pg_settings = (
        bench_settings(per_backend["postgres"], root / "postgres", password, database="postgres")
        if "postgres" in per_backend
        else None
    )
    pg_port = pg_settings.postgres.port if pg_settings else None
    targets = [
        Target(
            b,
            s,
            bench_settings(per_backend[b], root / f"{b}-{s}", password, database=f"mlflow_bench_{s}", pg_port=pg_port),
        )
        for b in backends
        for s in SETUPS
    ]
    db = provider_for(pg_settings) if pg_settings else None
    pool = None
    # server.tls on: every set-up serves HTTPS (stock too); clients spawned below trust their CAs.
    restore_trust = trust_for_clients(trust_bundle([t.settings for t in targets], root / "ca-bundle.pem"))
    try:
        progress("starting PostgreSQL" if db else "starting servers")
        if db:
            db.start()
        if spec.startup_repetitions:
            found = measure_startups(
                targets,
                repetitions=spec.startup_repetitions,
                fresh_store=fresh_store,
                progress=lambda m: progress(f"{m}  ({time.monotonic() - began:.0f} s)"),
            )
            for t in targets:
                t.footprint = found[t.name]
        for t in targets:
            fresh_store(t)
        progress(f"starting {len(targets)} servers and {max(spec.clients)} clients  ({time.monotonic() - began:.0f} s)")
        with ThreadPoolExecutor(len(targets) + 1) as ex:
            pool_future = ex.submit(
                ClientPool,
                max(max(spec.clients), spec.warmup_clients),
                mode=client_mode,
                request_timeout_s=spec.request_timeout_s,
            )
            futures = [ex.submit(_start, t) for t in targets]
            problems = [str(exc) for exc in (f.exception() for f in futures) if exc]
            pool = pool_future.result()
        if problems:
            raise UserError("a server did not start: " + " | ".join(problems))
        _timed(targets, spec, pool, lambda m: progress(f"{m}  ({time.monotonic() - began:.0f} s)"))
        progress(f"raw inserts  ({time.monotonic() - began:.0f} s)")
        raw = [dict(backend=t.backend, store=t.setup, **row) for t in targets for row in raw_insert_rates(t, spec)]
        env = describe_environment(targets, pg_settings)
        packages = {"tuned": pip_freeze(sys.executable), "stock": pip_freeze(stock_python)}
    finally:
        progress("stopping servers")
        if pool:
            pool.close()
        with ThreadPoolExecutor(max(len(targets), 1)) as ex:
            list(ex.map(lambda t: stop_server(t.settings), targets))
        if db:
            db.stop()
        restore_trust()
        shutil.rmtree(root, ignore_errors=True)
        progress("")
    doc = _document(targets, spec, raw, env, started_at, time.monotonic() - began, client_mode)
    doc["packages"] = packages
    return doc


def bench_settings(
    base: Settings, state: Path, password: str, *, database: str, pg_port: int | None = None
) -> Settings:
    """base moved to its own state dir and free ports, on the bench's own local PostgreSQL."""
    state.mkdir(mode=0o755, parents=True, exist_ok=True)
    s = base.model_copy(deep=True)
    s.lifecycle.venvs_dir = str(venvs_dir(base))  # the stock venv stays where it is cached
    s.state_dir = str(state)
    s.server.host, s.server.port = "127.0.0.1", free_port()
    s.server.start_timeout, s.server.allowed_hosts = max(s.server.start_timeout, 300), None
    s.server.fallback_to_sqlite = False
    s.sqlite.path = None
    pg = s.postgres
    pg.provider, pg.uri, pg.password, pg.database = "local", None, SecretStr(password), database
    pg.local.cluster_dir = None
    pg.port = pg_port or free_port()
    s.artifacts.s3.port, s.artifacts.artifacts_server.port = free_port(), free_port()  # one embedded S3 per set-up
    return s


def fresh_store(t: Target) -> None:
    """An empty store for the target: a new SQLite file, or its PostgreSQL database dropped and made again."""
    if t.backend == "postgres":
        recreate_database(t.settings)
        return
    for suffix in ("", "-wal", "-shm"):
        Path(f"{t.settings.sqlite_file}{suffix}").unlink(missing_ok=True)


def _start(t: Target) -> None:
    try:
        start_server(t.settings, stock=t.stock)
    except UserError as exc:
        raise UserError(f"{t.name}: {exc}") from None


def _timed(targets: list[Target], spec: WorkloadSpec, pool: ClientPool, progress) -> None:
    total = len(targets) * (1 + spec.repetitions * len(spec.clients))
    step = 0
    progress(f"seeding {spec.seed_runs} runs into each store")
    with ThreadPoolExecutor(len(targets)) as ex:  # untimed, all stores at once
        seeded = list(ex.map(lambda t: prepare_experiments(t.url, spec, label=t.setup), targets))
    for t, (experiment_id, seed_id) in zip(targets, seeded):
        t.experiment_id, t.seed_experiment_id = experiment_id, seed_id
    for t in targets:  # untimed: warm every server worker, client and connection
        step += 1
        progress(f"[{step}/{total}] {t.name}: warm-up")
        run_workload(
            t.url,
            spec,
            clients=spec.warmup_clients,
            pool=pool,
            ops=spec.warmup,
            experiment_id=t.experiment_id,
            seed_experiment_id=t.seed_experiment_id,
        )
    with PeakSampler.of_servers(targets) as sampler:
        _timed_cells(targets, spec, pool, progress, step, total)
    for t in targets:
        t.footprint.peak_rss = sampler.peaks.get(t.name, 0)


def _timed_cells(targets: list[Target], spec: WorkloadSpec, pool: ClientPool, progress, step: int, total: int) -> None:
    """Every (repetition, clients, target) cell, interleaved so drift falls on every set-up alike."""
    for rep in range(spec.repetitions):
        for clients in spec.clients:
            shift = (rep + clients) % len(targets)
            for t in targets[shift:] + targets[:shift]:
                step += 1
                progress(f"[{step}/{total}] rep {rep + 1}/{spec.repetitions} {t.name} x{clients} clients")
                result = run_workload(
                    t.url,
                    spec,
                    clients=clients,
                    pool=pool,
                    experiment_id=t.experiment_id,
                    seed_experiment_id=t.seed_experiment_id,
                    server_pgid=server_pgid(t.settings),
                )
                for op, r in result.ops.items():
                    t.reps.setdefault((clients, op), []).append(
                        {
                            "latencies": r.latencies,
                            "errors": r.errors,
                            "throughput": r.throughput,
                            "cpu_busy": r.cpu_busy,
                            "server_cpu_s": r.server_cpu_s,
                            "error_examples": r.error_examples,
                        }
                    )


def server_pgid(settings: Settings) -> int | None:
    """The process group of the server the settings started (None when it does not run)."""
    record = ServerRecord.read(ServerPaths.of(settings).pid_file)
    return record.pgid if record else None


def raw_insert_rates(t: Target, spec: WorkloadSpec) -> list[dict]:
    limits = {
        k: spec.raw.get(k, d)
        for k, d in (("single_rows", 300), ("batch_rows", 1000), ("batches", 10), ("max_seconds", 3))
    }
    if t.backend == "sqlite":
        return bench_raw.raw_sqlite(t.settings.sqlite_file, **limits)
    with pg_connection(t.settings) as conn:
        return bench_raw.raw_postgres(conn, **limits)


def describe_environment(targets: list[Target], pg_settings: Settings | None) -> dict:
    env = bench_raw.environment()
    env["postgres"] = "not benched"
    if pg_settings:
        with pg_connection(pg_settings) as conn:
            env["postgres"] = bench_raw.postgres_version(conn)
    for t in targets:
        if t.backend == "sqlite":
            env[f"sqlite_journal_mode_{t.setup}"] = sqlite_journal_mode(t.settings.sqlite_file)
    return env


def describe_setup(t: Target) -> dict:
    """The set-up's command line and the environment it adds, as it ran (paths and ports aside)."""
    s = t.settings
    cmd = [_short(c, s) for c in server_command(s, stock=t.stock)]
    added = {
        k: v
        for k, v in server_env(s, stock=t.stock).items()
        if k.startswith("MLFLOW_") and k != "MLFLOW_BACKEND_STORE_URI"
    }
    how = (
        "what `inv server.start` runs"
        if not t.stock
        else f"`mlflow server --host H --port P` as MLflow's docs show it, from a venv holding only "
        f"{' '.join(stock_requirements())} (and what pip pulls in): every MLflow default, job execution "
        "on with its default engine; store URI via MLFLOW_BACKEND_STORE_URI (the env form of "
        "--backend-store-uri)"
    )
    return {
        "backend": t.backend,
        "setup": t.setup,
        "how": how,
        "command": " ".join(cmd),
        "env": added,
        "store": backend_store_uri(s).replace(str(s.state_path), "<state>"),
    }


def _short(arg: str, settings: Settings) -> str:
    """An argument as the report shows it: our interpreter as python, the stock venv as <venvs>."""
    if arg == sys.executable:
        return "python"
    return arg.replace(str(venvs_dir(settings)), "<venvs>")


def _document(targets, spec, raw, env, started_at, seconds, client_mode) -> dict:
    cells = {(t.backend, t.setup, c, op): cell_stats(reps) for t in targets for (c, op), reps in t.reps.items()}
    backends = list(dict.fromkeys(t.backend for t in targets))
    rows = []
    for (backend, setup, clients, op), st in sorted(
        cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], OPS.index(kv[0][3]))
    ):
        rows.append(
            {
                "backend": backend,
                "setup": setup,
                "clients": clients,
                "op": op,
                **st,
                "rows_per_s": st["throughput"] * ROWS_PER_CALL[op] if op in ROWS_PER_CALL else None,
            }
        )
    ratios = []
    for b in backends:
        ratios += compare_cells(
            cells, key_a={"backend": b, "setup": "tuned"}, key_b={"setup": "stock"}, label="tuned vs stock"
        )
    if len(backends) == 2:
        for s in SETUPS:
            ratios += compare_cells(
                cells,
                key_a={"backend": "postgres", "setup": s},
                key_b={"backend": "sqlite"},
                label="postgres vs sqlite",
            )
    errors = [e for t in targets for reps in t.reps.values() for r in reps for e in r["error_examples"]][:20]
    footprint = {
        (t.backend, t.setup): footprint_stats(
            t.footprint.ready_s, t.footprint.idle_rss, t.footprint.idle_pss, t.footprint.peak_rss
        )
        for t in targets
    }
    return {
        "meta": {
            "preset": spec.name,
            "started_at": started_at.isoformat(timespec="seconds"),
            "duration_s": round(seconds, 1),
            "backends": backends,
            "client_mode": client_mode,
            "spec": spec.__dict__,
        },
        "environment": env,
        "setups": [describe_setup(t) for t in targets],
        "cells": rows,
        "raw": raw,
        "ratios": ratios,
        "mlflow_vs_raw": mlflow_vs_raw(cells, raw),
        "footprint": [{"backend": b, "setup": s, **stats} for (b, s), stats in footprint.items()],
        "targets": evaluate_targets(cells, backends, footprint, repetitions=spec.repetitions),
        "error_examples": errors,
    }


def stderr_progress() -> Callable[[str], None]:
    """One progress line on stderr, rewritten in place on a terminal."""
    tty = sys.stderr.isatty()

    def show(message: str) -> None:
        if tty:
            sys.stderr.write("\r\033[K" + message)
        elif message:
            sys.stderr.write(message + "\n")
        sys.stderr.flush()

    return show
