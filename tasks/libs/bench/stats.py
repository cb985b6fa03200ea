"""Statistics for the bench: percentiles, per-cell summaries, paired ratios and the targets.

Pure functions over plain lists, so they are tested against known inputs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TargetSpec:
    """One tuned-vs-stock target, evaluated on every backend benched.

    measure:
      every_cell  the worst of stock p50 / tuned p50 and tuned calls/s / stock calls/s over
                  every (clients, op) cell: "no cell slower than stock by more than 1 - threshold"
      p50         stock p50 / tuned p50 of one cell (x times faster)
      throughput  tuned calls/s / stock calls/s of one cell
      ready       tuned / stock median seconds from start to ready (lower is better)
      memory      tuned / stock median idle RSS of the process tree (lower is better)
    """

    name: str
    measure: str
    threshold: float
    op: str | None = None
    clients: int | None = None

    @property
    def lower_is_better(self) -> bool:
        return self.measure in ("ready", "memory")


# Tuned (jobs on) against a plain `pip install mlflow` started as MLflow's docs show it.
TARGETS = (
    TargetSpec("every op at every client count: p50 and calls/s vs stock (worst cell)", "every_cell", 0.9),
    TargetSpec("single-client log_metric p50 speed-up", "p50", 2.0, "log_metric", 1),
    TargetSpec("start to ready on a fresh store, tuned/stock", "ready", 0.6),
    TargetSpec("idle RSS of the server's process tree, tuned/stock", "memory", 0.5),
)
# A worst cell says something only when each cell was run this many times (interleaved).
MIN_REPETITIONS_FOR_WORST_CELL = 3


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    The same definition as numpy's default ("linear", type 7): p50 of [1, 2, 3, 4] is 2.5.
    NaN for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summarize(latencies: Sequence[float]) -> dict[str, Any]:
    """n, p50/p95/p99/mean/max in milliseconds for latencies given in seconds."""
    ms = [x * 1000 for x in latencies]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else math.nan,
        "max_ms": max(ms) if ms else math.nan,
    }


def ratio(numerator: float | None, denominator: float | None) -> float:
    """numerator / denominator; NaN when either is missing, NaN or the denominator is 0."""
    if numerator is None or denominator is None:
        return math.nan
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Ratio of each pair (repetition i against repetition i); pairs with a gap are skipped."""
    if len(numerators) != len(denominators):
        raise ValueError(f"cannot pair {len(numerators)} values with {len(denominators)}")
    return [r for r in (ratio(a, b) for a, b in zip(numerators, denominators)) if not math.isnan(r)]


def ratio_summary(
    pooled_num: float, pooled_den: float, rep_num: Sequence[float], rep_den: Sequence[float]
) -> dict[str, Any]:
    """The ratio of the pooled statistics plus the spread of the repetition-by-repetition ratios."""
    pairs = paired_ratios(rep_num, rep_den)
    return {
        "value": ratio(pooled_num, pooled_den),
        "paired": pairs,
        "paired_median": statistics.median(pairs) if pairs else math.nan,
        "paired_min": min(pairs) if pairs else math.nan,
        "paired_max": max(pairs) if pairs else math.nan,
    }


def cells_by_key(doc: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """A results document's cells by (backend, setup, clients, op)."""
    return {(c["backend"], c["setup"], c["clients"], c["op"]): c for c in doc["cells"]}


def cell_stats(reps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pool one cell's repetitions: reps are {"latencies": [s...], "errors": n, "throughput": calls/s}."""
    reps = list(reps)
    pooled = [x for r in reps for x in r["latencies"]]
    out = summarize(pooled)
    rep_tp = [r["throughput"] for r in reps]
    rep_cpu = [r["cpu_busy"] for r in reps if r.get("cpu_busy") is not None]
    out.update(server_cpu_ms_per_call(reps))
    out.update(
        errors=sum(r["errors"] for r in reps),
        throughput=statistics.median(rep_tp) if rep_tp else math.nan,
        cpu_busy=statistics.median(rep_cpu) if rep_cpu else math.nan,
        rep_throughput=rep_tp,
        rep_p50_ms=[percentile([x * 1000 for x in r["latencies"]], 50) for r in reps],
    )
    return out


def server_cpu_ms_per_call(reps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The server's CPU per successful call: its group's CPU time over every repetition / their calls.

    Repetitions without a reading (server_cpu_s None) are left out of both sums; also the
    per-repetition figures, so their spread shows.
    """
    measured = [r for r in reps if r.get("server_cpu_s") is not None and r["latencies"]]
    calls = sum(len(r["latencies"]) for r in measured)
    cpu = sum(r["server_cpu_s"] for r in measured)
    return {
        "server_cpu_ms": cpu * 1000 / calls if calls else math.nan,
        "rep_server_cpu_ms": [r["server_cpu_s"] * 1000 / len(r["latencies"]) for r in measured],
    }


def compare_cells(cells: dict[tuple, dict[str, Any]], *, key_a: dict, key_b: dict, label: str) -> list[dict]:
    """Ratios between two families of cells that differ only in key_a vs key_b.

    cells maps (backend, setup, clients, op) -> cell_stats. For each cell of family A with a
    twin in family B: latency ratio B.p50 / A.p50 (so > 1 means A is faster) and throughput
    ratio A / B, each pooled and repetition by repetition; and the server's CPU per call,
    B / A (> 1: A costs its server less).
    """
    fields = ("backend", "setup", "clients", "op")
    rows = []
    for key, a in cells.items():
        named = dict(zip(fields, key))
        if any(named[k] != v for k, v in key_a.items()):
            continue
        twin = tuple({**named, **key_b}[f] for f in fields)
        b = cells.get(twin)
        if b is None:
            continue
        lat = ratio_summary(b["p50_ms"], a["p50_ms"], b["rep_p50_ms"], a["rep_p50_ms"])
        tp = ratio_summary(a["throughput"], b["throughput"], a["rep_throughput"], b["rep_throughput"])
        cpu = ratio(b.get("server_cpu_ms"), a.get("server_cpu_ms"))
        rows.append(
            {
                "comparison": label,
                **{k: v for k, v in named.items() if k not in key_b},
                "p50_ratio": lat["value"],
                "p50_paired": lat["paired"],
                "throughput_ratio": tp["value"],
                "throughput_paired": tp["paired"],
                "server_cpu_ratio": cpu,
            }
        )
    return rows


def evaluate_targets(
    cells: dict[tuple, dict[str, Any]],
    backends: Iterable[str],
    footprint: dict[tuple, dict[str, Any]] | None = None,
    repetitions: int = MIN_REPETITIONS_FOR_WORST_CELL,
) -> list[dict[str, Any]]:
    """Each target on each backend: the measured tuned-vs-stock value and whether it is met.

    footprint maps (backend, setup) -> footprint_stats(...); without it the start-up and
    memory targets are not measured. The worst-cell target is not measured below
    MIN_REPETITIONS_FOR_WORST_CELL repetitions.
    """
    out = []
    for backend in backends:
        for spec in TARGETS:
            if spec.measure == "every_cell" and repetitions < MIN_REPETITIONS_FOR_WORST_CELL:
                value, where = math.nan, f"needs {MIN_REPETITIONS_FOR_WORST_CELL}+ repetitions, ran {repetitions}"
            else:
                value, where = _target_value(spec, backend, cells, footprint or {})
            met = not math.isnan(value) and (
                value <= spec.threshold if spec.lower_is_better else value >= spec.threshold
            )
            out.append(
                {
                    "target": spec.name,
                    "backend": backend,
                    "op": spec.op,
                    "clients": spec.clients,
                    "measure": spec.measure,
                    "threshold": spec.threshold,
                    "direction": "<=" if spec.lower_is_better else ">=",
                    "value": value,
                    "where": where,
                    "met": met,
                }
            )
    return out


def _target_value(spec: TargetSpec, backend: str, cells: dict, footprint: dict) -> tuple[float, str]:
    if spec.measure in ("ready", "memory"):
        key = "ready_median_s" if spec.measure == "ready" else "idle_rss_median"
        tuned, stock = footprint.get((backend, "tuned")), footprint.get((backend, "stock"))
        return (ratio(tuned[key], stock[key]), "") if tuned and stock else (math.nan, "")
    if spec.measure == "every_cell":
        return worst_cell(cells, backend)
    tuned = cells.get((backend, "tuned", spec.clients, spec.op))
    stock = cells.get((backend, "stock", spec.clients, spec.op))
    if tuned is None or stock is None:
        return math.nan, ""
    if spec.measure == "p50":
        return ratio(stock["p50_ms"], tuned["p50_ms"]), ""
    return ratio(tuned["throughput"], stock["throughput"]), ""


def worst_cell(cells: dict[tuple, dict[str, Any]], backend: str) -> tuple[float, str]:
    """The lowest tuned-vs-stock ratio over every cell of backend, p50 and calls/s alike, and where."""
    worst, where = math.nan, ""
    for (b, setup, clients, op), tuned in cells.items():
        stock = cells.get((b, "stock", clients, op))
        if b != backend or setup != "tuned" or stock is None:
            continue
        for label, value in (
            ("p50", ratio(stock["p50_ms"], tuned["p50_ms"])),
            ("calls/s", ratio(tuned["throughput"], stock["throughput"])),
        ):
            if not math.isnan(value) and (math.isnan(worst) or value < worst):
                worst, where = value, f"{op} x{clients} {label}{_cpu_note(tuned, stock)}"
    return worst, where


def _cpu_note(tuned: dict[str, Any], stock: dict[str, Any]) -> str:
    """ "; CPU 97%/95% busy" (tuned/stock): whether the machine itself was the limit of a cell."""
    busy = [cell.get("cpu_busy", math.nan) for cell in (tuned, stock)]
    if any(math.isnan(b) for b in busy):
        return ""
    return f"; CPU {busy[0]:.0%}/{busy[1]:.0%} busy"


def footprint_stats(
    ready_s: Sequence[float], idle_rss: Sequence[int], idle_pss: Sequence[int], peak_rss: int
) -> dict[str, Any]:
    """Medians of the start-up readings of one set-up, with the peak RSS under the workload."""
    return {
        "ready_s": list(ready_s),
        "ready_median_s": statistics.median(ready_s) if ready_s else math.nan,
        "idle_rss": list(idle_rss),
        "idle_rss_median": statistics.median(idle_rss) if idle_rss else math.nan,
        "idle_pss_median": statistics.median(idle_pss) if idle_pss else math.nan,
        "peak_rss": peak_rss or math.nan,
    }


def mlflow_vs_raw(cells: dict[tuple, dict[str, Any]], raw: list[dict]) -> list[dict[str, Any]]:
    """MLflow's metric rows/s against the raw insert rate into the same store, pair by pair.

    raw rows: {"backend", "store" (the set-up whose database it was), "mode", "rows_per_s"};
    the mode "1 row/commit" pairs with log_metric, the batched mode with log_batch_1000.
    """
    out = []
    stores = dict.fromkeys((r["backend"], r["store"]) for r in raw)
    for backend, setup in stores:
        modes = {r["mode"]: r["rows_per_s"] for r in raw if (r["backend"], r["store"]) == (backend, setup)}
        single = modes.get("1 row/commit", math.nan)
        batched = next((v for m, v in modes.items() if m != "1 row/commit"), math.nan)
        levels = sorted({k[2] for k in cells if k[:2] == (backend, setup) and k[3] == "log_metric"})
        pairs = [
            (f"log_metric, {c} client(s)", (backend, setup, c, "log_metric"), 1, single, "1 row/commit") for c in levels
        ]
        pairs.append(
            (
                "log_batch(1000), 1 client",
                (backend, setup, 1, "log_batch_1000"),
                1000,
                batched,
                next((m for m in modes if m != "1 row/commit"), "batched"),
            )
        )
        for what, key, rows_per_call, raw_rate, mode in pairs:
            cell = cells.get(key)
            mlflow_rate = cell["throughput"] * rows_per_call if cell else math.nan
            out.append(
                {
                    "backend": backend,
                    "setup": setup,
                    "what": what,
                    "mlflow_rows_per_s": mlflow_rate,
                    "raw_mode": mode,
                    "raw_rows_per_s": raw_rate,
                    "mlflow_over_raw": ratio(mlflow_rate, raw_rate),
                }
            )
    return out
