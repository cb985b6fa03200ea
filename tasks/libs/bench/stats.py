"""Statistics for the bench: percentiles, per-cell summaries, paired ratios and the targets.

Pure functions over plain lists, so they are tested against known inputs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

# Targets: our set-up against stock, on every backend benched.
#   (name, op, clients, measure, threshold); measure "p50" = stock p50 / tuned p50,
#   "throughput" = tuned calls/s / stock calls/s. Both read "x times better than stock".
TARGETS = (
    ("single-client log_metric p50 speed-up", "log_metric", 1, "p50", 4.0),
    ("8-client log_metric throughput gain", "log_metric", 8, "throughput", 1.5),
    ("single-client log_batch(1000) p50 speed-up", "log_batch_1000", 1, "p50", 1.2),
)


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


def cell_stats(reps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pool one cell's repetitions: reps are {"latencies": [s...], "errors": n, "throughput": calls/s}."""
    reps = list(reps)
    pooled = [x for r in reps for x in r["latencies"]]
    out = summarize(pooled)
    rep_tp = [r["throughput"] for r in reps]
    out.update(
        errors=sum(r["errors"] for r in reps),
        throughput=statistics.median(rep_tp) if rep_tp else math.nan,
        rep_throughput=rep_tp,
        rep_p50_ms=[percentile([x * 1000 for x in r["latencies"]], 50) for r in reps],
    )
    return out


def compare_cells(cells: dict[tuple, dict[str, Any]], *, key_a: dict, key_b: dict, label: str) -> list[dict]:
    """Ratios between two families of cells that differ only in key_a vs key_b.

    cells maps (backend, setup, clients, op) -> cell_stats. For each cell of family A with a
    twin in family B: latency ratio B.p50 / A.p50 (so > 1 means A is faster) and throughput
    ratio A / B, each pooled and repetition by repetition.
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
        rows.append(
            {
                "comparison": label,
                **{k: v for k, v in named.items() if k not in key_b},
                "p50_ratio": lat["value"],
                "p50_paired": lat["paired"],
                "throughput_ratio": tp["value"],
                "throughput_paired": tp["paired"],
            }
        )
    return rows


def evaluate_targets(cells: dict[tuple, dict[str, Any]], backends: Iterable[str]) -> list[dict[str, Any]]:
    """Each target on each backend: the measured tuned-vs-stock ratio and whether it is met."""
    out = []
    for backend in backends:
        for name, op, clients, measure, threshold in TARGETS:
            tuned = cells.get((backend, "tuned", clients, op))
            stock = cells.get((backend, "stock", clients, op))
            if tuned is None or stock is None:
                value = math.nan
            elif measure == "p50":
                value = ratio(stock["p50_ms"], tuned["p50_ms"])
            else:
                value = ratio(tuned["throughput"], stock["throughput"])
            out.append(
                {
                    "target": name,
                    "backend": backend,
                    "op": op,
                    "clients": clients,
                    "measure": measure,
                    "threshold": threshold,
                    "value": value,
                    "met": (not math.isnan(value)) and value >= threshold,
                }
            )
    return out


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


def fmt(value: Any, digits: int = 1) -> str:
    """A number for a table: fixed digits, '-' for NaN/None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)
