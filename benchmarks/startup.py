"""Seconds to ready: db.start (fresh and existing data dir) and server.start, tuned vs stock.

    python3 benchmarks/startup.py [--repeat N]

Stock and tuned are the bench's two set-ups (tasks/libs/server/command.py says what each
runs); both are started by the same start_server, each on a fresh store, and ready means
/health answers and a store call succeeds.
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

from tabulate import tabulate

import tasks  # noqa: F401  (makes tasks/ importable)
from tasks.libs.core.processes import free_port
from tasks.libs.core.settings import load_settings
from tasks.libs.postgres.connection import recreate_database
from tasks.libs.postgres.providers import provider_for
from tasks.libs.server.lifecycle import start_server, stop_server

PASSWORD = "startup-bench"


def settings_for(state: Path, backend: str, pg_port: int):
    state.mkdir(mode=0o755)
    return load_settings(
        environ={},
        local_file=False,
        overrides={
            "state_dir": str(state),
            "backend": backend,
            "server.port": free_port(),
            "postgres.port": pg_port,
            "postgres.provider": "local",
            "postgres.password": PASSWORD,
        },
    ).settings


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    root = Path(f"/tmp/mlflow-ops-startup-{os.getpid()}")
    root.mkdir(mode=0o755)
    rows: dict[str, list[float]] = {}
    pg = settings_for(root / "pg", "postgres", free_port())
    db = provider_for(pg)
    try:
        for i in range(args.repeat):
            db.stop()
            db.wipe()
            began = time.monotonic()
            db.start()
            rows.setdefault("db.start, no data dir", []).append(time.monotonic() - began)
            db.stop()
            began = time.monotonic()
            db.start()
            rows.setdefault("db.start, existing data dir", []).append(time.monotonic() - began)
            for backend in ("sqlite", "postgres"):
                for setup in ("stock", "tuned"):
                    if backend == "postgres":
                        recreate_database(pg)
                    s = settings_for(root / f"{setup}-{backend}-{i}", backend, pg.postgres.port)
                    label = f"{'stock mlflow server' if setup == 'stock' else 'server.start (tuned)'}, {backend}"
                    rows.setdefault(label, []).append(start_server(s, stock=setup == "stock").seconds)
                    stop_server(s)
    finally:
        db.stop()
        shutil.rmtree(root, ignore_errors=True)
    table = [(name, f"{statistics.median(v):.2f}", " ".join(f"{x:.2f}" for x in v)) for name, v in rows.items()]
    print(tabulate(table, headers=["what", "median s", "each run s"]))


if __name__ == "__main__":
    main()
