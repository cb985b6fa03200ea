"""The scale bench's outputs, all rendered from its results document: terminal, JSON, CSV, Markdown, chart."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.libs.bench.report import RESULTS_ROOT, package_lines
from tasks.libs.bench.stats import ratio
from tasks.libs.reporting.formats import json_safe, megabytes, new_report_dir, number, table

FILES = ("results.json", "results.csv", "report.md", "chart.png")
CSV_FIELDS = (
    "backend",
    "setup",
    "figure",
    "scale",
    "n",
    "errors",
    "p50_ms",
    "p95_ms",
    "calls_per_s",
    "rate",
    "unit",
    "server_cpu_ms",
    "idle_rss",
    "peak_rss",
    "limit_p50_ms",
    "limit_rate",
    "limit_what",
)
HEADERS = [
    "backend",
    "figure",
    "scale",
    "tuned",
    "stock",
    "tuned vs stock",
    "limit",
    "limit/tuned",
    "srv CPU ms tuned",
    "stock",
]


def _value(f: dict[str, Any] | None) -> tuple[float, str, bool]:
    """(the figure's headline value, its unit, whether higher is better)."""
    if f is None:
        return math.nan, "", False
    if not math.isnan(f.get("rate", math.nan) if f.get("rate") is not None else math.nan):
        return f["rate"], f.get("unit", ""), True
    return f.get("p50_ms", math.nan), "ms p50", False


def _limit(f: dict[str, Any] | None) -> float:
    if f is None:
        return math.nan
    rate = f.get("limit_rate")
    return rate if rate is not None and not math.isnan(rate) else f.get("limit_p50_ms", math.nan)


def pairs(doc: dict) -> list[tuple[str, str, str, dict | None, dict | None]]:
    """(backend, figure, scale, tuned, stock) in the order the figures were taken."""
    seen: dict[tuple[str, str, str], dict[str, dict]] = {}
    for f in doc["figures"]:
        seen.setdefault((f["backend"], f["figure"], f["scale"]), {})[f["setup"]] = f
    return [(b, fig, sc, both.get("tuned"), both.get("stock")) for (b, fig, sc), both in seen.items()]


def figure_rows(doc: dict) -> list[list[str]]:
    rows = []
    for backend, figure, scale, tuned, stock in pairs(doc):
        tv, unit, higher = _value(tuned)
        sv, _, _ = _value(stock)
        better = ratio(tv, sv) if higher else ratio(sv, tv)  # > 1: tuned better
        limit = _limit(tuned)
        rows.append(
            [
                backend,
                figure,
                scale,
                f"{number(tv, 1)} {unit}",
                number(sv, 1),
                _times(better),
                number(limit, 1),
                (f"{ratio(tv, limit):.0%}" if higher else f"{ratio(limit, tv):.0%}") if not math.isnan(limit) else "-",
                number((tuned or {}).get("server_cpu_ms"), 2),
                number((stock or {}).get("server_cpu_ms"), 2),
            ]
        )
    return rows


def load_rows(doc: dict) -> list[list[str]]:
    return [
        [
            r["backend"],
            r["setup"],
            r["scale"],
            r["method"],
            f"{r['rows']:,}",
            number(r["seconds"], 1),
            number(r["rows_per_s"], 0),
        ]
        for r in doc["loads"]
    ]


LOAD_HEADERS = ["backend", "set-up", "what", "how", "rows", "seconds", "rows/s", "raw insert rows/s"]


def lever_rows(doc: dict) -> list[list[str]]:
    return [
        [
            r["backend"],
            r["lever"],
            f"{r['figure']} at {r['scale']}",
            number(r["before_p50_ms"], 1),
            number(r["after_p50_ms"], 1),
            _times(r["speedup"]),
            "adopted" if r["adopted"] else "not adopted",
        ]
        for r in doc["levers"]
    ]


LEVER_HEADERS = ["backend", "lever", "measured on", "without p50 ms", "with p50 ms", "without/with", ""]


def artifact_rows(doc: dict) -> list[list[str]]:
    return [
        [
            f["backend"],
            f["setup"],
            f["figure"],
            number(f["rate"], 0),
            megabytes(f["idle_rss"]),
            megabytes(f["peak_rss"]),
            _times(ratio(f["peak_rss"], f["idle_rss"])),
        ]  # fmt: skip
        for f in doc["figures"]
        if f["figure"].endswith(("upload", "download"))
    ]


ARTIFACT_HEADERS = ["backend", "set-up", "figure", "MB/s", "idle RSS MB", "peak RSS MB", "peak/idle"]


def target_rows(doc: dict) -> list[list[str]]:
    return [
        [
            t["target"],
            t["backend"],
            f"{t['direction']} {t['threshold']}",
            number(t["value"], 2) + (f" ({t['where']})" if t["where"] else ""),
            "MET"
            if t["met"]
            else ("NOT MEASURED" if math.isnan(t["value"] if t["value"] is not None else math.nan) else "NOT MET"),
        ]  # fmt: skip
        for t in doc["targets"]
    ]


def _times(value: float) -> str:
    text = number(value, 2)
    return text if text == "-" else text + "x"


def terminal_report(doc: dict) -> str:
    env = doc["environment"]
    limit = (doc.get("artifact_limit") or [{}])[0]
    parts = [
        f"bench preset {doc['meta']['preset']} (scale): {', '.join(doc['meta']['backends'])} x tuned/stock, "
        f"{doc['meta']['duration_s']} s; MLflow {env['mlflow']}, PostgreSQL {env.get('postgres')}, "
        f"kernel {env.get('kernel')}, {env.get('cpu_model')}, {env['cpu_count']} CPUs",
        "tuned vs stock > 1: tuned better (lower p50, or higher rate); limit: the same work without MLflow "
        "(SQL on the store, or a loopback HTTP copy); limit/tuned: how close tuned gets to it",
        "",
        table(figure_rows(doc), HEADERS),
        "",
        table(load_rows(doc), LOAD_HEADERS),
    ]
    if doc["levers"]:
        parts += ["", table(lever_rows(doc), LEVER_HEADERS)]
    if artifact_rows(doc):
        parts += ["", table(artifact_rows(doc), ARTIFACT_HEADERS)]
        if limit:
            parts.append(
                f"loopback copy: {number(limit['upload_mb_s'], 0)} MB/s up, {number(limit['download_mb_s'], 0)} MB/s down ({limit['what']})"
            )
    parts += ["", table(target_rows(doc), ["target", "backend", "needs", "measured", ""])]
    errors = [e for f in doc["figures"] for e in f.get("error_examples", [])]
    if errors:
        parts += ["", "errors (first few):"] + [f"  {e}" for e in errors[:5]]
    return "\n".join(parts)


def markdown(doc: dict) -> str:
    meta, env = doc["meta"], doc["environment"]
    limit = (doc.get("artifact_limit") or [{}])[0]
    lines = [
        f"# mlflow-ops bench: preset `{meta['preset']}` (cost as the store grows)",
        "",
        f"Started {meta['started_at']}, {meta['duration_s']} s. Machine: kernel {env.get('kernel')}, "
        f"{env.get('cpu_model')}, {env['cpu_count']} cores.",
        "",
        "## Environment",
        "",
        table(sorted(env.items()), ["what", "value"], markdown=True),
        "",
        "## Set-ups",
        "",
    ]
    for s in doc.get("setups", []):
        lines.append(
            f"- **{s['backend']} / {s['setup']}**: {s['how']}  \n  `{s['command']}`"
            + (f"  \n  env: `{s['env']}`" if s["env"] else "")
        )
    lines += [
        "",
        "## Targets",
        "",
        table(target_rows(doc), ["target", "backend", "needs", "measured", "result"], markdown=True),
        "",
        "## Figures",
        "",
        "Sequential calls from one client. tuned vs stock > 1: tuned is better (lower p50, or a higher "
        "rate). limit: the same work without MLflow: for calls, the equivalent SQL on the same store "
        "(p50 ms); for traces the raw batched insert rate of rows into the same store (rows/s); for the artifact, a loopback HTTP "
        "copy of the same bytes (MB/s). srv CPU: the server's process group CPU time / calls.",
        "",
        table(figure_rows(doc), HEADERS, markdown=True),
        "",
        "## Loading the store",
        "",
        "Rows straight into MLflow's tables of the store each server uses (runs, params, tags, metrics, "
        "latest_metrics), valid as MLflow writes them; ANALYZE afterwards.",
        "",
        table(load_rows(doc), LOAD_HEADERS, markdown=True),
    ]
    if doc["raw"]:
        lines += [
            "",
            "Raw insert rate of metric-shaped rows into the same stores (the floor under every write):",
            "",
            table(
                [[r["backend"], r["store"], r["mode"], number(r["rows_per_s"], 0)] for r in doc["raw"]],
                ["backend", "store", "mode", "rows/s"],
                markdown=True,
            ),  # fmt: skip
        ]
    if doc["levers"]:
        lines += ["", "## Levers", "", "Measured on the tuned store in the same run, then removed.", "",
                  table(lever_rows(doc), LEVER_HEADERS, markdown=True)]  # fmt: skip
    if artifact_rows(doc):
        lines += ["", "## The artifact", "", table(artifact_rows(doc), ARTIFACT_HEADERS, markdown=True)]
        if limit:
            lines += [
                "",
                f"Loopback copy: {number(limit['upload_mb_s'], 0)} MB/s up, {number(limit['download_mb_s'], 0)} MB/s down ({limit['what']}).",
            ]
    errors = [e for f in doc["figures"] for e in f.get("error_examples", [])]
    if errors:
        lines += ["", "## Errors (first few)", ""] + [f"- `{e}`" for e in errors[:20]]
    lines += package_lines(doc)
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict, root: Path | str | None = None) -> Path:
    root = Path(root) if root else RESULTS_ROOT
    text_json, text_md = json.dumps(json_safe(doc, digits=6), indent=1) + "\n", markdown(doc)
    out = new_report_dir(root, "scale", when=datetime.fromisoformat(doc["meta"]["started_at"]))
    (out / "results.json").write_text(text_json)
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for f in doc["figures"]:
            writer.writerow({k: _csv(f.get(k)) for k in CSV_FIELDS})
    (out / "report.md").write_text(text_md)
    write_chart(doc, out / "chart.png")
    return out


def _csv(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else value


def write_chart(doc: dict, path: Path) -> None:
    """Per backend: tuned vs stock (> 1 tuned better) and tuned vs its limit, per figure and scale (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = doc["meta"]["backends"]
    fig, axes = plt.subplots(1, len(backends), figsize=(8 * len(backends), 6), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        mine = [p for p in pairs(doc) if p[0] == backend]
        labels, vs_stock, vs_limit = [], [], []
        for _, figure, scale, tuned, stock in mine:
            tv, _, higher = _value(tuned)
            sv, _, _ = _value(stock)
            limit = _limit(tuned)
            labels.append(f"{figure}\n{scale}")
            vs_stock.append(ratio(tv, sv) if higher else ratio(sv, tv))
            vs_limit.append(ratio(tv, limit) if higher else ratio(limit, tv))
        xs = range(len(labels))
        ax.bar(
            [x - 0.2 for x in xs],
            [v if v == v else 0 for v in vs_stock],
            0.4,
            label="tuned vs stock (> 1: tuned better)",
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [v if v == v else 0 for v in vs_limit],
            0.4,
            label="tuned vs its limit (1 = the limit)",
        )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{backend}: cost as the store grows")
        ax.legend(fontsize=8)
    env = doc["environment"]
    fig.suptitle(f"mlflow-ops bench scale (MLflow {env['mlflow']}, {env.get('cpu_model')}, {env['cpu_count']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
