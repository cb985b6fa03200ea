"""Running the logging workload (workload.py) against a server, for `inv bench` and `full-check`.

    spec = load_spec("quick")  # workload.py
    with ClientPool(max(spec.clients)) as pool:
        exp, seed = prepare_experiments(url, spec)
        result = run_workload(url, spec, clients=4, pool=pool, experiment_id=exp, seed_experiment_id=seed)
    result.summary()   # per op: n, errors, p50/p95/p99 ms, calls/s

Every client is a process of its own (spawned once per ClientPool, so 8 clients on 2
cores do not queue behind one GIL) with its own MlflowClient and its own run. Clients
meet at a barrier before each phase (an operation), so a phase's throughput is its calls
over the wall time from the phase's first start to its last end. MLflow's HTTP retries
are off (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0): a failed call is counted, never retried.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import uuid
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

from tasks.libs.bench.workload import (
    OPS,
    OpResult,
    WorkloadResult,
    WorkloadSpec,
    cpu_reading,
    group_cpu_seconds,
    phase_cpu_busy,
    phase_server_cpu,
)


class ClientPool:
    """Client workers reused across runs: `mode="process"` (default) or "thread"."""

    def __init__(self, size: int, *, mode: str = "process", request_timeout_s: float = 60):
        self.size, self.mode = size, mode
        env = {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(request_timeout_s)),
        }
        self._files = tempfile.mkdtemp(prefix="mlflow-ops-clients-")
        self._manager: SyncManager | None = None
        if mode == "process":
            ctx = multiprocessing.get_context("spawn")
            self._manager = ctx.Manager()
            self._pool = ctx.Pool(size, initializer=_init_worker, initargs=(env, self._files, True))
        elif mode == "thread":
            from multiprocessing.pool import ThreadPool

            os.environ.update(env)  # threads share the process: retries off for it all
            _init_worker({}, self._files)
            self._pool = ThreadPool(size)
        else:
            raise ValueError(f"mode must be 'process' or 'thread', not {mode!r}")

    def barrier(self, parties: int):
        return self._manager.Barrier(parties) if self._manager else threading.Barrier(parties)

    def map_jobs(self, jobs: list[dict]) -> list[dict]:
        if len(jobs) > self.size:
            raise ValueError(f"{len(jobs)} clients but the pool has {self.size} workers")
        pending = [self._pool.apply_async(_client_job, (job,)) for job in jobs]
        return [p.get() for p in pending]

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
        if self._manager:
            self._manager.shutdown()
        shutil.rmtree(self._files, ignore_errors=True)

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_experiments(tracking_uri: str, spec: WorkloadSpec, *, label: str = "") -> tuple[str, str]:
    """Create the workload experiment and a seeded one for search_runs; their ids (untimed)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri)
    tag = f"{label}-{uuid.uuid4().hex[:8]}" if label else uuid.uuid4().hex[:8]
    exp_id = client.create_experiment(f"mlflow-ops-bench-{tag}")
    seed_id = client.create_experiment(f"mlflow-ops-bench-seed-{tag}")
    now = int(time.time() * 1000)
    for i in range(spec.seed_runs):
        run = client.create_run(seed_id, run_name=f"seed-{i}")
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, (i * 37 % 100) / 100 + j, now, 0) for j, k in enumerate(("score", "loss", "acc"))],
            params=[Param(k, str(i % 7)) for k in ("alpha", "depth", "model")],
        )
    return exp_id, seed_id


def run_workload(
    tracking_uri: str,
    spec: WorkloadSpec,
    *,
    clients: int = 1,
    pool: ClientPool | None = None,
    experiment_id: str | None = None,
    seed_experiment_id: str | None = None,
    ops: dict[str, int] | None = None,
    server_pgid: int | None = None,
) -> WorkloadResult:
    """Run spec's ops (or `ops`) with `clients` concurrent clients against a running server.

    Without a pool one is made for this call (slower: it spawns the clients); without
    experiment ids they are created (and the seed runs logged) first, untimed. With
    server_pgid, each phase also records the CPU time of the server's process group.
    """
    if experiment_id is None or seed_experiment_id is None:
        experiment_id, seed_experiment_id = prepare_experiments(tracking_uri, spec)
    own_pool = pool is None
    pool = pool or ClientPool(clients, request_timeout_s=spec.request_timeout_s)
    try:
        barrier = pool.barrier(clients)
        jobs = [
            {
                "uri": tracking_uri,
                "experiment_id": experiment_id,
                "seed_experiment_id": seed_experiment_id,
                "ops": ops or spec.ops_for(clients),
                "index": i,
                "barrier": barrier,
                "phase_timeout_s": spec.phase_timeout_s,
                "server_pgid": server_pgid,
            }
            for i in range(clients)
        ]
        began = time.monotonic()
        outputs = pool.map_jobs(jobs)
        wall = time.monotonic() - began
    finally:
        if own_pool:
            pool.close()
    merged: dict[str, OpResult] = {}
    for op in OPS:
        parts = [out[op] for out in outputs if op in out]
        if not parts:
            continue
        spans = [p["span"] for p in parts if p["span"]]
        merged[op] = OpResult(
            latencies=[x for p in parts for x in p["latencies"]],
            errors=sum(p["errors"] for p in parts),
            error_examples=[e for p in parts for e in p["error_examples"]][:3],
            span=(min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None,
            cpu_busy=phase_cpu_busy(parts),
            server_cpu_s=phase_server_cpu(parts),
        )
    return WorkloadResult(clients=clients, ops=merged, wall_s=wall)


# --- inside a client (a pool worker) -----------------------------------------------------

_FILES: dict[str, str] = {}
_MODEL: list = []


def _init_worker(env: dict[str, str], files_dir: str, quiet: bool = False) -> None:
    """Import what the workload needs and warm it locally, so the first timed call is not an import."""
    os.environ.update(env)
    if quiet:  # a worker process: MLflow's notes and warnings would drown the progress line
        import logging
        import sys
        import warnings

        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the worker)
        warnings.filterwarnings("ignore")
        logging.getLogger("mlflow").setLevel(logging.ERROR)
    import mlflow
    import mlflow.sklearn  # noqa: F401
    from sklearn.linear_model import LogisticRegression

    folder = Path(files_dir) / str(os.getpid())
    folder.mkdir(exist_ok=True)
    (folder / "small.txt").write_bytes(b"x" * 1024)
    (folder / "blob_1mb.bin").write_bytes(os.urandom(1024 * 1024))
    _FILES.update(small=str(folder / "small.txt"), large=str(folder / "blob_1mb.bin"))
    xs = [[i % 5, (i * 7) % 3, i % 2] for i in range(60)]
    ys = [int(x[0] + x[1] > 3) for x in xs]
    _MODEL[:] = [LogisticRegression(max_iter=200).fit(xs, ys)]


def _client_job(job: dict) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(job["uri"])
    state: dict[str, Any] = {"run_id": None, "job": job, "client": client}
    results = {}
    for op in OPS:
        count = job["ops"].get(op, 0)
        if count <= 0:
            continue
        try:
            job["barrier"].wait(timeout=job["phase_timeout_s"] * 2 + 60)
        except threading.BrokenBarrierError:
            pass  # another client died or lagged: carry on unsynchronised rather than hang
        except Exception:
            pass
        results[op] = _phase(op, count, state, job["phase_timeout_s"])
    if state["run_id"]:
        with contextlib.suppress(Exception):
            client.set_terminated(state["run_id"])
    return results


def _phase(op: str, count: int, state: dict, timeout_s: float) -> dict:
    call = _CALLS[op]
    out: dict[str, Any] = {"latencies": [], "errors": 0, "error_examples": [], "span": None}
    pgid = state["job"].get("server_pgid")
    server_at_start = group_cpu_seconds(pgid) if pgid else None
    cpu_at_start = cpu_reading()
    start = time.monotonic()
    deadline = start + timeout_s
    for i in range(count):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        try:
            call(state, i)
        except Exception as exc:
            out["errors"] += 1
            if len(out["error_examples"]) < 3:
                out["error_examples"].append(f"{op}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        out["latencies"].append(time.perf_counter() - t0)
    out["span"] = (start, time.monotonic())
    out["cpu"] = (cpu_at_start, cpu_reading())
    if pgid:
        out["server_cpu"] = (server_at_start, group_cpu_seconds(pgid))
    return out


def _create_run(state, i):
    run = state["client"].create_run(state["job"]["experiment_id"], run_name=f"client-{state['job']['index']}-{i}")
    state["run_id"] = state["run_id"] or run.info.run_id


def _log_batch(size: int):
    def call(state, i):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"b{size}_{k % 20}", float(k), now, i * size + k) for k in range(size)]
        state["client"].log_batch(_run(state), metrics=metrics)

    return call


def _log_model(state, i):
    import mlflow

    mlflow.set_tracking_uri(state["job"]["uri"])
    with mlflow.start_run(run_id=_run(state)):
        mlflow.sklearn.log_model(_MODEL[0], name=f"model-{i}", pip_requirements=["scikit-learn"])


def _run(state) -> str:
    if not state["run_id"]:
        raise RuntimeError("no run: create_run failed for this client")
    return state["run_id"]


_CALLS = {
    "create_run": _create_run,
    "log_param": lambda s, i: s["client"].log_param(_run(s), f"param_{i}", i),
    "log_metric": lambda s, i: s["client"].log_metric(_run(s), "loss", 1.0 / (i + 1), step=i),
    "log_batch_10": _log_batch(10),
    "log_batch_100": _log_batch(100),
    "log_batch_1000": _log_batch(1000),
    "get_metric_history": lambda s, i: s["client"].get_metric_history(_run(s), "loss"),
    "search_runs": lambda s, i: s["client"].search_runs(
        [s["job"]["seed_experiment_id"]],
        filter_string="metrics.score > 0.3",
        order_by=["metrics.score DESC"],
        max_results=100,
    ),
    "log_artifact_small": lambda s, i: s["client"].log_artifact(_run(s), _FILES["small"], artifact_path=f"small/{i}"),
    "log_artifact_1mb": lambda s, i: s["client"].log_artifact(_run(s), _FILES["large"], artifact_path=f"large/{i}"),
    "log_model_sklearn": _log_model,
}
