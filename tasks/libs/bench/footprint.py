"""What a set-up costs besides latency: seconds from start to ready on a fresh store, and the
memory of the server's whole process tree (idle after start, and the peak under the workload).

Ready means what `server.start` waits for: /health answers and a store call succeeds. Each
start runs alone on the machine (the bench's PostgreSQL aside), so that start-ups do not
compete for the CPU. Memory is summed over every process in the server's process group
(uvicorn's supervisor and workers, MLflow's job runner and huey consumers when they run):
RSS, which counts pages shared between forked processes once per process, and PSS, which
splits each shared page between the processes that map it (what the tree really costs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

from tasks.libs.core.processes import group_members
from tasks.libs.core.waits import wait_until
from tasks.libs.server.control import ServerPaths, ServerRecord, start_server, stop_server

IDLE_SETTLE_S = 2.0  # after ready, before the idle reading: workers finish their own start-up
IDLE_MAX_WAIT_S = 20.0


@dataclass
class Footprint:
    ready_s: list[float] = field(default_factory=list)
    idle_rss: list[int] = field(default_factory=list)  # bytes
    idle_pss: list[int] = field(default_factory=list)
    peak_rss: int = 0


def tree_memory(pgid: int, *, pss: bool = True) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over the live members of process group pgid (PSS 0 if not asked)."""
    rss = pss_total = 0
    for proc in group_members(pgid):
        try:
            if pss:
                info = proc.memory_full_info()
                rss, pss_total = rss + info.rss, pss_total + info.pss
            else:
                rss += proc.memory_info().rss
        except psutil.Error:  # a process that ended while we looked
            continue
    return rss, pss_total


def idle_memory(pgid: int) -> tuple[int, int]:
    """The tree's memory once it has settled: two readings 1 s apart within 2% of each other."""
    time.sleep(IDLE_SETTLE_S)
    last = [tree_memory(pgid)]

    def settled() -> bool:
        last.append(tree_memory(pgid))
        (a, _), (b, _) = last[-2], last[-1]
        return b > 0 and abs(a - b) <= 0.02 * b

    wait_until(settled, timeout=IDLE_MAX_WAIT_S, interval=1.0)
    return last[-1]


def measure_startups(
    targets: Iterable, *, repetitions: int, fresh_store: Callable, progress: Callable[[str], None]
) -> dict[str, Footprint]:
    """Start each target's server alone, `repetitions` times interleaved, each on a fresh store:
    seconds to ready and idle memory, then stop it."""
    targets = list(targets)
    found = {t.name: Footprint() for t in targets}
    for rep in range(repetitions):
        for i, t in enumerate(targets[rep % len(targets) :] + targets[: rep % len(targets)]):
            progress(f"start-up {rep + 1}/{repetitions}: {t.name} ({i + 1}/{len(targets)})")
            fresh_store(t)
            result = start_server(t.settings, stock=t.stock)
            try:
                rss, pss = idle_memory(result.record.pgid)
            finally:
                stop_server(t.settings)
            found[t.name].ready_s.append(result.seconds)
            found[t.name].idle_rss.append(rss)
            found[t.name].idle_pss.append(pss)
    return found


class PeakSampler:
    """Samples the RSS of each named process group while the block runs; keeps each one's peak."""

    def __init__(self, groups: dict[str, int], interval: float = 0.5):
        self.groups = groups  # name -> process group id
        self.peaks = dict.fromkeys(self.groups, 0)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pgid in self.groups.items():
                rss, _ = tree_memory(pgid, pss=False)
                self.peaks[name] = max(self.peaks[name], rss)
            self._stop.wait(self._interval)

    @classmethod
    def of_servers(cls, targets: Iterable, interval: float = 0.5) -> PeakSampler:
        """A sampler of each target's running server group, by target name."""
        groups = {}
        for t in targets:
            record = ServerRecord.read(ServerPaths.of(t.settings).pid_file)
            if record is not None:
                groups[t.name] = record.pgid
        return cls(groups, interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
