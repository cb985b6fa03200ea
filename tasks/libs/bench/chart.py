"""The bench's chart: tuned vs stock as ratios per operation and client count (latency and calls/s,
and the server's CPU per call), with start-up and memory."""

from __future__ import annotations

import math
from pathlib import Path

from tasks.libs.bench.stats import cells_by_key, ratio
from tasks.libs.bench.workload import OPS


def write_chart(doc: dict, path: Path) -> None:
    """Tuned vs stock as ratios (> 1: tuned better): per op and client count, and start-up and memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cells_by_key(doc)
    backends = doc["meta"]["backends"]
    levels = sorted({c for (_, _, c, _) in cells})
    fig, axes = plt.subplots(
        2,
        len(backends) + 1,
        figsize=(7 * len(backends) + 5, 11),
        gridspec_kw={"width_ratios": [3] * len(backends) + [1.6]},
        squeeze=False,
    )
    for ax, backend in zip(axes[1], backends):
        ops = [op for op in OPS if (backend, "tuned", 1, op) in cells]
        width = 0.8 / max(len(levels), 1)
        for i, clients in enumerate(levels):
            values = [_cpu_saving(cells, backend, clients, op) for op in ops]
            ax.bar([x + i * width for x in range(len(ops))], values, width, label=f"{clients} client(s)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + width * (len(levels) - 1) / 2 for x in range(len(ops))], ops, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("stock / tuned server CPU ms per call (log)")
        ax.set_title(f"{backend}: server CPU per call, stock / tuned (> 1: tuned cheaper)")
        ax.legend(fontsize=8)
    axes[1][-1].axis("off")
    for ax, backend in zip(axes[0], backends):
        ops = [op for op in OPS if (backend, "tuned", 1, op) in cells]
        width = 0.8 / max(len(levels), 1)
        for i, clients in enumerate(levels):
            values = [_speedup(cells, backend, clients, op) for op in ops]
            ax.bar([x + i * width for x in range(len(ops))], values, width, label=f"{clients} client(s)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.9, color="red", linewidth=0.8, linestyle="--", label="0.9x (target floor)")
        ax.set_xticks([x + width * (len(levels) - 1) / 2 for x in range(len(ops))], ops, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("tuned vs stock, worse of p50 and calls/s (log)")
        ax.set_title(f"{backend}: tuned vs stock per operation")
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    footprint = {(f["backend"], f["setup"]): f for f in doc.get("footprint", [])}
    labels, values = [], []
    for backend in backends:
        tuned, stock = footprint.get((backend, "tuned")), footprint.get((backend, "stock"))
        for what, key in (("ready", "ready_median_s"), ("idle RSS", "idle_rss_median"), ("peak RSS", "peak_rss")):
            labels.append(f"{backend}\n{what}")
            values.append(ratio(tuned[key], stock[key]) if tuned and stock else 0)
    ax.bar(range(len(values)), [v if v == v else 0 for v in values], color="tab:green")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("tuned / stock (lower is better)")
    ax.set_title("start-up and memory")
    fig.suptitle(
        f"mlflow-ops bench ({doc['meta']['preset']}, MLflow {doc['environment']['mlflow']}, "
        f"{doc['environment']['cpu_count']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_saving(cells: dict, backend: str, clients: int, op: str) -> float:
    """stock / tuned server CPU ms per call for one cell (0 if missing)."""
    tuned, stock = cells.get((backend, "tuned", clients, op)), cells.get((backend, "stock", clients, op))
    if not tuned or not stock:
        return 0.0
    value = ratio(stock.get("server_cpu_ms"), tuned.get("server_cpu_ms"))
    return 0.0 if math.isnan(value) else value


def _speedup(cells: dict, backend: str, clients: int, op: str) -> float:
    """The worse of stock p50 / tuned p50 and tuned calls/s / stock calls/s for one cell (0 if missing)."""
    tuned, stock = cells.get((backend, "tuned", clients, op)), cells.get((backend, "stock", clients, op))
    if not tuned or not stock:
        return 0.0
    values = [ratio(stock["p50_ms"], tuned["p50_ms"]), ratio(tuned["throughput"], stock["throughput"])]
    values = [v for v in values if not math.isnan(v)]
    return min(values) if values else 0.0
