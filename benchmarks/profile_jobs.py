"""Where a server's CPU goes under one client's log_metric loop, process by process (and py-spy).

    .venv/bin/python benchmarks/profile_jobs.py [--setup stock|tuned|tuned-huey|no-jobs] [--seconds 30] [--py-spy]

Starts one server of the set-up on a fresh SQLite store in a temporary state dir (free port),
waits --settle seconds (MLflow's job consumers start and import after the server is ready), reads
--idle seconds of idle CPU, then for --seconds logs one metric at a time from one client and reads
the CPU time of every process in the server's group before and after: per role (uvicorn
worker, job runner, huey consumer, ...) CPU ms per call, with the call p50. With --py-spy,
`py-spy record --subprocesses` samples the whole group meanwhile (pip install py-spy) and the
top functions by own samples are printed per role; the flame graph is kept in --out.
stock: the bench's plain-venv stock (built once, see server.command.stock_venv).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from tasks.libs.bench.stats import percentile
from tasks.libs.core.processes import free_port, group_members
from tasks.libs.core.settings import load_settings
from tasks.libs.server.command import ensure_stock_venv
from tasks.libs.server.control import ServerPaths, ServerRecord, start_server, stop_server

SETUPS: dict[str, tuple[dict[str, object], bool]] = {
    "stock": ({}, True),
    "tuned": ({}, False),
    "tuned-huey": ({"server.job_engine": "huey"}, False),
    "no-jobs": ({"server.job_execution": False}, False),
}


def role(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    for needle, name in (
        ("_periodic_tasks_consumer", "huey consumer (periodic tasks)"),
        ("huey_consumer", "huey consumer (job queue)"),
        ("_job_runner", "job runner (huey)"),
        ("_executor_runner", "job runner (executor)"),
        ("multiprocessing.spawn", "uvicorn worker"),
        ("multiprocessing.resource_tracker", "resource tracker"),
        ("mlflow server", "mlflow server (cli)"),
        ("uvicorn", "uvicorn supervisor"),
    ):
        if needle in cmd:
            return name
    return cmd[:60]


def cpu_by_pid(pgid: int) -> dict[int, tuple[str, float]]:
    out = {}
    for proc in group_members(pgid):
        try:
            t = proc.cpu_times()
            out[proc.pid] = (role(proc), t.user + t.system + t.children_user + t.children_system)
        except psutil.Error:
            continue
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=SETUPS, default="stock")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument(
        "--settle", type=float, default=90, help="seconds to wait after ready: job consumers start late"
    )
    parser.add_argument("--idle", type=float, default=20, help="seconds of idle CPU to read after settling")
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/profile")
    args = parser.parse_args()
    overrides, stock = SETUPS[args.setup]
    state = Path(tempfile.mkdtemp(prefix="mlflow-ops-profile-", dir="/tmp"))
    state.chmod(0o755)
    settings = load_settings(
        overrides={
            "state_dir": str(state),
            "server.port": free_port(),
            "backend": "sqlite",
            "server.start_timeout": 600,
            **overrides,
        },
        local_file=False,
    ).settings
    if stock:
        user = load_settings(local_file=False).settings
        settings.lifecycle.venvs_dir = str(user.lifecycle.venvs_dir or user.state_path / "venvs")
        ensure_stock_venv(settings)
    from mlflow import MlflowClient

    spy = None
    try:
        began = time.monotonic()
        start_server(settings, stock=stock)
        print(f"{args.setup}: ready in {time.monotonic() - began:.1f} s")
        record = ServerRecord.read(ServerPaths.of(settings).pid_file)
        assert record is not None, "the server started but wrote no pid file"
        pgid = record.pgid
        ready0 = cpu_by_pid(pgid)
        ready_at = time.monotonic()
        client = MlflowClient(settings.server.url)
        run = client.create_run(client.create_experiment("profile")).info.run_id
        for i in range(20):  # warm every worker and connection
            client.log_metric(run, "warm", i, step=i)
        time.sleep(max(0.0, args.settle - (time.monotonic() - ready_at)))
        idle0 = cpu_by_pid(pgid)
        time.sleep(args.idle)
        idle1 = cpu_by_pid(pgid)
        if args.py_spy:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            raw = out / f"{args.setup}.txt"
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pgid), "--subprocesses", "--format", "raw",
                 "--duration", str(int(args.seconds)), "--rate", "100", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
            time.sleep(1)
        before = cpu_by_pid(pgid)
        latencies = []
        end = time.monotonic() + args.seconds
        step = 0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
            latencies.append((time.perf_counter() - t0) * 1000)
            step += 1
        after = cpu_by_pid(pgid)
        if spy:
            spy.wait(timeout=args.seconds + 120)
    finally:
        stop_server(settings)
        shutil.rmtree(state, ignore_errors=True)
    calls = len(latencies)
    print(
        f"{calls} log_metric calls in {args.seconds:.0f} s: p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms"
    )
    windows = (
        ("the first seconds after ready", ready0, idle0, args.settle),
        ("idle", idle0, idle1, args.idle),
        ("under load", before, after, None),
    )
    for title, a, b, per in windows:
        roles: dict[str, list[float]] = collections.defaultdict(list)
        for pid, (name, cpu) in b.items():
            roles[name].append(cpu - a.get(pid, (name, 0.0))[1])
        total = sum(sum(v) for v in roles.values())
        unit = f"CPU ms per second ({per:.0f} s)" if per else f"CPU ms per call ({calls} calls)"
        print(f"\n{title}: {unit}; processes")
        for name, values in sorted(roles.items(), key=lambda kv: -sum(kv[1])):
            share = sum(values) * 1000 / (per if per else calls)
            print(f"  {name:36s} {share:8.2f}   {len(values)}")
        print(f"  {'whole group':36s} {total * 1000 / (per if per else calls):8.2f}")
    if spy:
        print(f"\npy-spy samples: {raw}; top own-time functions:")
        own: collections.Counter[str] = collections.Counter()
        roles_of = {pid: name for pid, (name, _) in after.items()}
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            procs = [f for f in frames if f.startswith("process ")]
            digits = procs[-1].split(" ")[1].split(":")[0] if procs else ""
            pid = int(digits) if digits.isdigit() else 0
            own[f"{roles_of.get(pid, 'other')[:26]:26s} | {frames[-1][:100]}"] += int(count)
        for frame, n in own.most_common(25):
            print(f"  {n:7d}  {frame}")


if __name__ == "__main__":
    main()
