"""The logging workload `inv bench` and `full-check` run: its presets (benchmarks/workload.yaml)
and operations, what a run measured, and the CPU readings each phase takes.

clients.py runs it: client processes, each with its own MlflowClient and run, against a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from tasks.libs.bench.stats import summarize
from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import group_members
from tasks.libs.core.settings import PROJECT_ROOT

SPEC_FILE = PROJECT_ROOT / "benchmarks" / "workload.yaml"
OPS = (
    "create_run",
    "log_param",
    "log_metric",
    "log_batch_10",
    "log_batch_100",
    "log_batch_1000",
    "get_metric_history",
    "search_runs",
    "log_artifact_small",
    "log_artifact_1mb",
    "log_model_sklearn",
)
# Metrics (rows) one call writes: turns calls/s into metrics/s where that means something.
ROWS_PER_CALL = {"log_metric": 1, "log_batch_10": 10, "log_batch_100": 100, "log_batch_1000": 1000}


class SpecError(UserError):
    """The workload file is wrong; the message says where."""


@dataclass
class WorkloadSpec:
    name: str
    ops: dict[str, int]
    clients: list[int]
    repetitions: int
    seed_runs: int
    warmup: dict[str, int]
    warmup_clients: int
    phase_timeout_s: float
    request_timeout_s: float
    raw: dict[str, float]
    concurrent_ops: dict[str, int] | None = None  # ops for cells of 2+ clients; None: same as ops
    startup_repetitions: int = 0  # server starts per set-up timed alone (ready time, idle memory)

    def scaled(self, **changes) -> WorkloadSpec:
        return WorkloadSpec(**{**self.__dict__, **changes})

    def ops_for(self, clients: int) -> dict[str, int]:
        return self.ops if clients == 1 or self.concurrent_ops is None else self.concurrent_ops


def load_spec(preset: str = "quick", path: Path | str | None = None) -> WorkloadSpec:
    """The named preset from benchmarks/workload.yaml (or path), validated."""
    path = Path(path) if path else SPEC_FILE
    try:
        presets = (yaml.safe_load(path.read_text()) or {}).get("presets") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read the workload file ({exc})") from None
    if preset not in presets:
        raise SpecError(f"unknown preset {preset!r}; {path.name} defines: {', '.join(sorted(presets))}")
    data = presets[preset]
    try:
        ops = _ops(data.get("ops") or {}, f"{preset}.ops")
        spec = WorkloadSpec(
            name=preset,
            ops=ops,
            clients=[int(c) for c in data["clients"]],
            repetitions=int(data["repetitions"]),
            seed_runs=int(data["seed_runs"]),
            warmup=_ops(data.get("warmup") or {}, f"{preset}.warmup"),
            warmup_clients=int(data.get("warmup_clients", 1)),
            phase_timeout_s=float(data.get("phase_timeout_s", 60)),
            request_timeout_s=float(data.get("request_timeout_s", 60)),
            raw={k: float(v) for k, v in (data.get("raw") or {}).items()},
            concurrent_ops=_ops(data["concurrent_ops"], f"{preset}.concurrent_ops")
            if data.get("concurrent_ops")
            else None,
            startup_repetitions=int(data.get("startup_repetitions", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"{path.name}: preset {preset!r} is incomplete or malformed ({exc!r})") from None
    if not spec.clients or min(spec.clients) < 1 or spec.repetitions < 1 or spec.startup_repetitions < 0:
        raise SpecError(f"{path.name}: preset {preset!r} needs clients >= 1 and repetitions >= 1")
    return spec


def _ops(data: dict, where: str) -> dict[str, int]:
    unknown = set(data) - set(OPS)
    if unknown:
        raise SpecError(f"{where}: unknown operation(s) {', '.join(sorted(unknown))}; known: {', '.join(OPS)}")
    counts = {op: int(data.get(op, 0)) for op in OPS}
    if any(n < 0 for n in counts.values()):
        raise SpecError(f"{where}: counts must be >= 0")
    return counts


@dataclass
class OpResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls only
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    span: tuple[float, float] | None = None  # monotonic (first start, last end)
    # The whole machine's CPU busy fraction over the span (server, database and clients share
    # the cores): near 1.0 means the cell is bound by this machine's CPU, not by a set-up.
    cpu_busy: float | None = None
    # CPU seconds the server's whole process group used over the span (user + system, its
    # workers, job runners and the children they reaped): what the calls cost the server,
    # a figure the other work on a shared machine barely moves.
    server_cpu_s: float | None = None

    @property
    def server_cpu_ms_per_call(self) -> float | None:
        if self.server_cpu_s is None or not self.latencies:
            return None
        return self.server_cpu_s * 1000 / len(self.latencies)

    @property
    def wall_s(self) -> float:
        return max(self.span[1] - self.span[0], 1e-9) if self.span else 0.0

    @property
    def throughput(self) -> float:
        """Successful calls per second over the phase's wall time (all clients together)."""
        return len(self.latencies) / self.wall_s if self.span and self.latencies else 0.0


@dataclass
class WorkloadResult:
    clients: int
    ops: dict[str, OpResult]
    wall_s: float

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            op: {**summarize(r.latencies), "errors": r.errors, "throughput": r.throughput} for op, r in self.ops.items()
        }

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.ops.values())


def phase_cpu_busy(parts: list[dict]) -> float | None:
    """CPU busy fraction from the first client's start reading to the last client's end reading.

    Each client reads the system-wide counters when its phase starts and ends; the counters are
    the machine's, so readings from different clients subtract cleanly.
    """
    readings = [p for p in parts if p.get("span") and p.get("cpu")]
    if not readings:
        return None
    first = min(readings, key=lambda p: p["span"][0])["cpu"][0]
    last = max(readings, key=lambda p: p["span"][1])["cpu"][1]
    busy, total = last[0] - first[0], last[1] - first[1]
    return busy / total if total > 0 else None


def phase_server_cpu(parts: list[dict]) -> float | None:
    """The server group's CPU seconds from the first client's start reading to the last client's end reading."""
    readings = [p for p in parts if p.get("span") and p.get("server_cpu")]
    if not readings:
        return None
    first = min(readings, key=lambda p: p["span"][0])["server_cpu"][0]
    last = max(readings, key=lambda p: p["span"][1])["server_cpu"][1]
    return max(last - first, 0.0)


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in the group, with the children each reaped.

    A process that ended and was reaped by a member counts through that member's children_*
    times; one that ends between two readings without a reaping member is lost (MLflow's job
    subprocesses are reaped by the runner that started them).
    """
    total = 0.0
    for proc in group_members(pgid):
        try:
            t = proc.cpu_times()
        except psutil.Error:  # ended while we looked
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_reading() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - getattr(times, "iowait", 0.0), total
