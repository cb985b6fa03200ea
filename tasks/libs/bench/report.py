"""Bench output: the terminal table, results.json/.csv, report.md, chart.png, and compare.

The results document (what bench_runner.run_bench returns) is the single source: every
file is rendered from it, and `compare` reads two of them back from results.json.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.libs.bench.chart import write_chart
from tasks.libs.bench.stats import cells_by_key, ratio
from tasks.libs.bench.workload import OPS
from tasks.libs.core.settings import PROJECT_ROOT
from tasks.libs.reporting.formats import json_safe, megabytes, new_report_dir, number, percent, table

RESULTS_ROOT = PROJECT_ROOT / "benchmarks" / "results"
CSV_FIELDS = (
    "backend",
    "setup",
    "clients",
    "op",
    "n",
    "errors",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "max_ms",
    "throughput",
    "cpu_busy",
    "server_cpu_ms",
    "rows_per_s",
)
FILES = ("results.json", "results.csv", "report.md", "chart.png")


def timing_rows(doc: dict) -> list[list[str]]:
    """One row per (backend, clients, op): tuned and stock side by side, and the speed-up."""
    cells, rows = cells_by_key(doc), []
    keys = sorted({(b, c, op) for b, _, c, op in cells}, key=lambda k: (k[0], k[1], OPS.index(k[2])))
    for backend, clients, op in keys:
        row = [backend, clients, op]
        tuned, stock = (cells.get((backend, s, clients, op)) for s in ("tuned", "stock"))
        for cell in (tuned, stock):
            row += (
                [
                    number(cell["p50_ms"]),
                    number(cell["p95_ms"]),
                    number(cell["p99_ms"]),
                    number(cell["throughput"]),
                    number(cell.get("server_cpu_ms"), 2),
                    percent(cell.get("cpu_busy")),
                    cell["errors"],
                ]
                if cell
                else ["-"] * 7
            )
        row.append(_times(ratio(stock["p50_ms"], tuned["p50_ms"])) if tuned and stock else "-")
        row.append(_times(ratio(stock.get("server_cpu_ms"), tuned.get("server_cpu_ms"))) if tuned and stock else "-")
        rows.append(row)
    return rows


TIMING_HEADERS = [
    "backend",
    "clients",
    "op",
    "tuned p50 ms",
    "p95",
    "p99",
    "calls/s",
    "srv CPU ms/call",
    "cpu",
    "err",
    "stock p50 ms",
    "p95",
    "p99",
    "calls/s",
    "srv CPU ms/call",
    "cpu",
    "err",
    "stock/tuned p50",
    "stock/tuned srv CPU",
]


def target_rows(doc: dict) -> list[list[str]]:
    return [
        [
            t["target"],
            t["backend"],
            f"{t.get('direction', '>=')} {t['threshold']}x",
            _times(t["value"]) + (f" ({t['where']})" if t.get("where") else ""),
            "MET" if t["met"] else ("NOT MEASURED" if _times(t["value"]) == "-" else "NOT MET"),
        ]
        for t in doc["targets"]
    ]


def footprint_rows(doc: dict) -> list[list[str]]:
    """Per set-up: seconds to ready (median and each start), idle RSS/PSS and peak RSS of the tree."""
    rows = []
    for f in doc.get("footprint", []):
        rows.append(
            [
                f["backend"],
                f["setup"],
                number(f["ready_median_s"], 1),
                " ".join(number(s, 1) for s in f["ready_s"]),
                megabytes(f["idle_rss_median"]),
                megabytes(f["idle_pss_median"]),
                megabytes(f["peak_rss"]),
            ]
        )
    return rows


FOOTPRINT_HEADERS = [
    "backend",
    "set-up",
    "ready s (median)",
    "each start s",
    "idle RSS MB",
    "idle PSS MB",
    "peak RSS MB",
]


def _times(value) -> str:
    text = number(value, 2)
    return text if text == "-" else text + "x"


def raw_rows(doc: dict) -> list[list[str]]:
    return [
        [
            r["backend"],
            r["setup"],
            r["what"],
            number(r["mlflow_rows_per_s"], 0),
            r["raw_mode"],
            number(r["raw_rows_per_s"], 0),
            number(100 * r["mlflow_over_raw"] if r["mlflow_over_raw"] else math.nan, 2) + "%",
        ]
        for r in doc["mlflow_vs_raw"]
    ]


def backend_rows(doc: dict) -> list[list[str]]:
    return [
        [r["setup"], r["clients"], r["op"], number(r["p50_ratio"], 2), number(r["throughput_ratio"], 2)]
        for r in doc["ratios"]
        if r["comparison"] == "postgres vs sqlite"
    ]


def terminal_report(doc: dict) -> str:
    env = doc["environment"]
    parts = [
        f"bench preset {doc['meta']['preset']}: {', '.join(doc['meta']['backends'])} x tuned/stock, "
        f"{doc['meta']['spec']['repetitions']} repetitions, {doc['meta']['duration_s']} s; "
        f"MLflow {env['mlflow']}, SQLAlchemy {env['sqlalchemy']}, PostgreSQL {env.get('postgres')}, "
        f"SQLite {env['sqlite']}; kernel {env.get('kernel', '?')}, {env.get('cpu_model', '?')}, {env['cpu_count']} CPUs",
        "stock = `mlflow server --host H --port P` from a venv holding only mlflow==<pin> and psycopg2-binary "
        "(every MLflow default, job execution on); tuned = what `inv server.start` runs",
        "",
        table(timing_rows(doc), TIMING_HEADERS),
        "",
        table(footprint_rows(doc), FOOTPRINT_HEADERS),
        "",
        table(target_rows(doc), ["target (tuned vs stock)", "backend", "needs", "measured", ""]),
        "",
        table(raw_rows(doc), ["backend", "set-up", "MLflow", "metric rows/s", "raw mode", "raw rows/s", "MLflow/raw"]),
    ]
    if any(r["comparison"] == "postgres vs sqlite" for r in doc["ratios"]):
        slow = [r for r in backend_rows(doc) if r[1] == 1]
        parts += [
            "",
            table(slow, ["set-up", "clients", "op", "postgres/sqlite p50", "postgres/sqlite calls/s"]),
        ]
    if doc["error_examples"]:
        parts += ["", "errors (first few):"] + [f"  {e}" for e in doc["error_examples"][:5]]
    return "\n".join(parts)


def write_outputs(doc: dict, root: Path | str | None = None) -> Path:
    """benchmarks/results/<timestamp>/ with results.json, results.csv, report.md, chart.png."""
    root = Path(root) if root else RESULTS_ROOT
    text_json, text_md = json.dumps(json_safe(doc, digits=6), indent=1) + "\n", markdown(doc)  # render before writing
    out = new_report_dir(root, when=datetime.fromisoformat(doc["meta"]["started_at"]))
    (out / "results.json").write_text(text_json)
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for cell in doc["cells"]:
            writer.writerow({k: _csv_value(cell.get(k)) for k in CSV_FIELDS})
    (out / "report.md").write_text(text_md)
    write_chart(doc, out / "chart.png")
    return out


def markdown(doc: dict) -> str:
    meta, env = doc["meta"], doc["environment"]
    lines = [
        f"# mlflow-ops bench: preset `{meta['preset']}`",
        "",
        f"Started {meta['started_at']}, {meta['duration_s']} s, {meta['spec']['repetitions']} repetitions "
        f"interleaved, clients {meta['spec']['clients']} (each its own {meta['client_mode']} and run).",
        "",
        "## Environment",
        "",
        table(sorted(env.items()), ["what", "value"], markdown=True),
        "",
        "## Set-ups",
        "",
    ]
    for s in doc["setups"]:
        lines.append(
            f"- **{s['backend']} / {s['setup']}**: {s['how']}  \n  `{s['command']}`"
            + (f"  \n  env: `{s['env']}`" if s["env"] else "")
            + f"  \n  store: `{s['store']}`"
        )
    lines += [
        "",
        "## Targets (tuned vs stock)",
        "",
        table(target_rows(doc), ["target", "backend", "needs", "measured", "result"], markdown=True),
        "",
        "## Start-up and memory",
        "",
        "Each set-up's server started alone on a fresh store, interleaved; ready = /health answers and a "
        "store call succeeds. Memory is summed over the server's whole process group: RSS counts pages "
        "shared between processes once per process, PSS splits them (what the tree really costs); idle "
        "after start-up, peak under the workload.",
        "",
        table(footprint_rows(doc), FOOTPRINT_HEADERS, markdown=True),
        "",
        "## Timings",
        "",
        "Latency in ms over all repetitions; calls/s is the median over repetitions of "
        "a phase's successful calls / its wall time with all clients running; srv CPU ms/call is "
        "the CPU time of the server's whole process group (workers, job runner, consumers, user + "
        "system) over the phase, divided by its successful calls, all repetitions pooled: what a call "
        "costs the server, which other work on a shared machine barely moves (the database's CPU is "
        "not in it); cpu is how busy the whole machine's CPU was meanwhile (server, database and "
        "clients share its cores: near 100% the machine, not the set-up, is the limit).",
        "",
        table(timing_rows(doc), TIMING_HEADERS, markdown=True),
        "",
        "## MLflow vs raw inserts into the same database",
        "",
        table(
            raw_rows(doc),
            ["backend", "set-up", "MLflow", "metric rows/s", "raw mode", "raw rows/s", "MLflow/raw"],
            markdown=True,
        ),
    ]
    if backend_rows(doc):
        lines += [
            "",
            "## PostgreSQL vs SQLite",
            "",
            "p50 ratio > 1: PostgreSQL is slower; calls/s ratio > 1: PostgreSQL does more.",
            "",
            table(
                backend_rows(doc),
                ["set-up", "clients", "op", "postgres/sqlite p50", "postgres/sqlite calls/s"],
                markdown=True,
            ),
        ]
    if doc["error_examples"]:
        lines += ["", "## Errors (first few)", ""] + [f"- `{e}`" for e in doc["error_examples"]]
    lines += package_lines(doc)
    return "\n".join(lines) + "\n"


def package_lines(doc: dict) -> list[str]:
    """Both venvs' `pip freeze`, side by side: what differs first, then the rest."""
    packages = doc.get("packages") or {}
    if not packages:
        return []
    names = {name: dict(_split_requirement(r) for r in reqs) for name, reqs in packages.items()}
    tuned, stock = names.get("tuned", {}), names.get("stock", {})
    every = sorted(set(tuned) | set(stock), key=str.lower)
    differ = [[p, tuned.get(p, "-"), stock.get(p, "-")] for p in every if tuned.get(p) != stock.get(p)]
    same = [p for p in every if tuned.get(p) == stock.get(p)]
    return [
        "",
        "## Packages",
        "",
        f"`pip freeze` of the venv each set-up runs from ({len(tuned)} packages tuned, {len(stock)} stock). "
        "Where they differ:",
        "",
        table(differ, ["package", "tuned", "stock"], markdown=True),
        "",
        f"The same in both ({len(same)}): " + ", ".join(f"{p} {tuned[p]}" for p in same),
    ]


def _split_requirement(line: str) -> tuple[str, str]:
    """'mlflow==3.17.2' -> ('mlflow', '3.17.2'); an editable or URL line keeps its text as the version."""
    name, sep, version = line.partition("==")
    if sep:
        return name.strip(), version.strip()
    return line.split(" ")[0].split("@")[0].strip() or line, line


def load_results(folder: Path | str) -> dict:
    path = Path(folder)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json there; give a folder under benchmarks/results/")
    return json.loads(path.read_text())


def compare(a: dict, b: dict) -> list[list[Any]]:
    """Cell by cell, B against A: p50 and calls/s in each, and B/A ratios."""
    ca, cb = cells_by_key(a), cells_by_key(b)
    rows = []
    for key in sorted(set(ca) & set(cb), key=lambda k: (k[0], k[1], k[2], OPS.index(k[3]))):
        x, y = ca[key], cb[key]
        rows.append(
            [
                *key,
                number(x["p50_ms"]),
                number(y["p50_ms"]),
                number(ratio(y["p50_ms"], x["p50_ms"]), 2),
                number(x["throughput"]),
                number(y["throughput"]),
                number(ratio(y["throughput"], x["throughput"]), 2),
                f"{x['errors']}/{y['errors']}",
            ]
        )
    return rows


def compare_footprint(a: dict, b: dict) -> list[list[Any]]:
    """Per set-up, B against A: seconds to ready and idle / peak RSS, with B/A ratios."""
    fa = {(f["backend"], f["setup"]): f for f in a.get("footprint", [])}
    fb = {(f["backend"], f["setup"]): f for f in b.get("footprint", [])}
    rows = []
    for key in sorted(set(fa) & set(fb)):
        x, y = fa[key], fb[key]
        row: list[Any] = [*key]
        for field_, show in (
            ("ready_median_s", lambda v: number(v, 1)),
            ("idle_rss_median", megabytes),
            ("peak_rss", megabytes),
        ):
            row += [show(x[field_]), show(y[field_]), number(ratio(y[field_], x[field_]), 2)]
        rows.append(row)
    return rows


COMPARE_FOOTPRINT_HEADERS = [
    "backend",
    "setup",
    "A ready s",
    "B ready s",
    "B/A",
    "A idle RSS MB",
    "B idle RSS MB",
    "B/A",
    "A peak RSS MB",
    "B peak RSS MB",
    "B/A",
]


COMPARE_HEADERS = [
    "backend",
    "setup",
    "clients",
    "op",
    "A p50 ms",
    "B p50 ms",
    "B/A p50",
    "A calls/s",
    "B calls/s",
    "B/A calls/s",
    "errors A/B",
]


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else value
