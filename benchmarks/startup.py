"""Seconds to ready: db.start (fresh and existing data dir) and server.start, tuned vs stock.

    python3 benchmarks/startup.py [--repeat N]

Stock is `mlflow server --backend-store-uri URI --host 127.0.0.1 --port P` as MLflow's docs
show it, started from this environment with `--uvicorn-opts "--http h11 --loop asyncio"`
(what a plain `pip install mlflow` runs: no httptools, no uvloop) and job
execution left on. Every start gets a fresh store; ready = /health answers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tasks  # noqa: E402,F401  (makes tasks/ importable)
from tabulate import tabulate  # noqa: E402

from tasks import postgres  # noqa: E402
from tasks.mlflow_server import health, server_command, start_server, stop_server  # noqa: E402
from tasks.processes import free_port, start_group, stop_group, wait_until  # noqa: E402
from tasks.credentials import backend_store_uri  # noqa: E402
from tasks.settings import load_settings  # noqa: E402


def settings_for(state: Path, backend: str, pg_port: int, password: str):
    return load_settings(environ={}, local_file=False, overrides={
        "state_dir": str(state), "backend": backend, "server.port": free_port(),
        "postgres.port": pg_port, "postgres.provider": "local", "postgres.password": password}).settings


def fresh_state(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(mode=0o755)
    return path


def time_stock(settings) -> float:
    env = dict(os.environ)
    cmd = server_command(settings, stock=True) + ["--backend-store-uri", backend_store_uri(settings, reveal=True),
                                                  "--uvicorn-opts", "--http h11 --loop asyncio"]
    began = time.monotonic()
    proc = start_group(cmd, env=env, log_path=settings.state_path / "stock.log", cwd=settings.state_path)
    try:
        if not wait_until(lambda: health(settings.server.url), timeout=180, interval=0.1):
            raise RuntimeError("stock server never became ready")
        return time.monotonic() - began
    finally:
        stop_group(proc.pid, grace=15)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    root = Path(f"/tmp/mlflow-ops-startup-{os.getpid()}")
    root.mkdir(mode=0o755)
    rows: dict[str, list[float]] = {}
    pg_state = fresh_state(root, "pg")
    pg = settings_for(pg_state, "postgres", free_port(), "startup-bench")
    db = postgres.provider_for(pg)
    try:
        for i in range(args.repeat):
            db.wipe() if hasattr(db, "wipe") else None
            began = time.monotonic(); db.start(); rows.setdefault("db.start, no data dir", []).append(time.monotonic() - began)
            db.stop()
            began = time.monotonic(); db.start(); rows.setdefault("db.start, existing data dir", []).append(time.monotonic() - began)
            for backend in ("sqlite", "postgres"):
                if backend == "postgres":
                    postgres.recreate_database(pg, password="startup-bench")
                s = settings_for(fresh_state(root, f"stock-{backend}-{i}"), backend, pg.postgres.port, "startup-bench")
                rows.setdefault(f"stock mlflow server, {backend}", []).append(time_stock(s))
                if backend == "postgres":
                    postgres.recreate_database(pg, password="startup-bench")
                s = settings_for(fresh_state(root, f"tuned-{backend}-{i}"), backend, pg.postgres.port, "startup-bench")
                rows.setdefault(f"server.start (tuned), {backend}", []).append(start_server(s).seconds)
                stop_server(s)
            db.stop()
    finally:
        db.stop()
        shutil.rmtree(root, ignore_errors=True)
    table = [(name, f"{statistics.median(v):.2f}", " ".join(f"{x:.2f}" for x in v)) for name, v in rows.items()]
    print(tabulate(table, headers=["what", "median s", "each run s"]))


if __name__ == "__main__":
    main()
