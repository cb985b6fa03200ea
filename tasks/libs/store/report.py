"""Render an inspect_store() report as terminal tables, Markdown or JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from tasks.libs.reporting.formats import human_bytes, json_safe, table

FORMATS = ("table", "json", "markdown")
# Keys whose values in [0, 1] read best as percentages (accuracy 70.39% -> 89.89%).
PERCENT_KEYS = re.compile(r"acc|precision|recall|f1|auc|ratio|rate", re.IGNORECASE)
TOP_TABLES_BY_SIZE = 15


def render(report: dict[str, Any], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(json_safe(report), indent=2, default=str)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = _Out(markdown=fmt == "markdown")
    out.line(f"store: {report['store']} ({report['dialect']})")
    for section, writer in _WRITERS.items():
        if section in report:
            out.heading(section)
            data = report[section]
            if isinstance(data, dict) and "error" in data:
                out.line(data["error"])
            else:
                writer(out, data)
    return out.text()


class _Out:
    def __init__(self, markdown: bool):
        self.markdown = markdown
        self.parts: list[str] = []

    def heading(self, title: str) -> None:
        self.parts.append(f"\n## {title}\n" if self.markdown else f"\n== {title} ==")

    def subheading(self, title: str) -> None:
        self.parts.append(f"\n**{title}**\n" if self.markdown else f"\n{title}:")

    def line(self, text: str) -> None:
        self.parts.append(text + ("\n" if self.markdown else ""))

    def table(self, rows: list, headers: list[str]) -> None:
        if rows:
            self.parts.append(table(rows, headers, markdown=self.markdown))
        else:
            self.line("(none)")

    def text(self) -> str:
        return "\n".join(self.parts).strip() + "\n"


def format_value(key: str, value: float, as_percent: bool) -> str:
    if math.isnan(value):
        return "NaN"
    return f"{value * 100:.2f}%" if as_percent else f"{value:.6g}"


def format_change(entry: dict[str, Any], as_percent: bool) -> str:
    change = entry["change"]
    if math.isnan(change):
        return "-"
    if as_percent:
        return f"{change * 100:+.2f} pp"
    relative = entry.get("relative_change")
    return f"{change:+.6g}" + (
        f" ({relative * 100:+.1f}%)" if relative is not None and not math.isnan(relative) else ""
    )


def _tables(out: _Out, tables: list[dict]) -> None:
    out.table([[t["table"], t["rows"]] for t in tables], ["table", "rows"])
    out.line(f"{len(tables)} tables, {sum(t['rows'] for t in tables)} rows")
    for t in tables:
        if "columns" not in t:
            continue
        out.subheading(f"{t['table']}  primary key ({', '.join(t['primary_key'])})")
        out.table(
            [
                [
                    c["name"],
                    c["type"],
                    "" if c["nullable"] else "NOT NULL",
                    "" if c["default"] is None else c["default"],
                ]
                for c in t["columns"]
            ],
            ["column", "type", "null", "default"],
        )
        for fk in t["foreign_keys"]:
            out.line(
                f"  foreign key ({', '.join(fk['columns'])}) -> {fk['references']} ({', '.join(fk['parent_columns'])})"
            )


def _schema(out: _Out, info: dict) -> None:
    behind = f" ({info['behind']} migration(s) behind)" if info.get("behind") else ""
    out.table(
        [
            ["store revision", info["store_revision"] or "-"],
            ["head of MLflow " + info["mlflow_version"], info["head_revision"]],
            ["state", info["state"] + behind],
        ]
        + ([["advice", info["advice"]]] if info["advice"] else []),
        ["", ""],
    )


def _workspaces(out: _Out, info: dict) -> None:
    if info.get("note"):
        out.line(info["note"])
        return
    out.table(
        [
            [
                w["workspace"] + ("" if w["in_workspaces_table"] else " (no workspaces row)"),
                w["experiments"],
                w["deleted_experiments"],
                w["runs"],
                w["traces"],
                w["registered_models"],
                w["model_versions"],
                w["prompts"],
            ]
            for w in info["workspaces"]
        ],
        ["workspace", "experiments", "deleted", "runs", "traces", "registered models", "versions", "prompts"],
    )


def _integrity(out: _Out, info: dict) -> None:
    if info["orphans"]:
        out.table(
            [
                [
                    f"{o['table']} ({', '.join(o['columns'])})",
                    f"{o['parent']} ({', '.join(o['parent_columns'])})",
                    o["rows"],
                    "; ".join(", ".join(map(str, s)) for s in o["sample"]),
                ]
                for o in info["orphans"]
            ],
            ["rows in", "point to missing", "orphans", "sample"],
        )
    out.line(f"{info['relationships_checked']} foreign-key relationships checked, {info['orphan_rows']} orphan row(s)")
    check = info["integrity_check"]
    if check is not None:
        out.line("integrity_check: " + (check if isinstance(check, str) else "; ".join(check)))
    for key, what in (
        ("unvalidated_foreign_keys", "foreign keys not validated"),
        ("invalid_indexes", "invalid indexes"),
    ):
        if info.get(key) is not None:
            out.line(f"{what}: {', '.join(info[key]) or 'none'}")


def _runs(out: _Out, info: dict) -> None:
    statuses = [
        s
        for s in ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED", "NONE")
        if any(s in e for e in info["by_experiment"])
    ]
    out.table(
        [
            [e["experiment_id"], e["experiment"], e["total"], *[e.get(s, 0) for s in statuses], e["deleted"]]
            for e in info["by_experiment"]
        ],
        ["id", "experiment", "runs", *statuses, "deleted"],
    )
    out.subheading(f"RUNNING for more than {info['stale_hours']:g} h ({info['stale_running_count']})")
    _run_list(out, info["stale_running"], info["stale_running_count"])
    out.subheading(f"without an end time ({info['without_end_time_count']})")
    _run_list(out, info["without_end_time"], info["without_end_time_count"])


def _run_list(out: _Out, runs: list[dict], total: int) -> None:
    out.table(
        [[r["run_id"], r["name"], r["experiment_id"], r["status"], r["started"], r["age_hours"]] for r in runs],
        ["run", "name", "exp", "status", "started", "age h"],
    )
    if total > len(runs):
        out.line(f"... {total - len(runs)} more")


def _metrics(out: _Out, info: dict) -> None:
    rows = []
    for e in info["per_run"]:
        pct = bool(PERCENT_KEYS.search(e["key"])) and all(
            0 <= v <= 1 for v in (e["first"], e["last"]) if not math.isnan(v)
        )
        rows.append(
            [
                e["run_name"] or e["run_id"][:8],
                e["key"],
                f"{format_value(e['key'], e['first'], pct)} -> {format_value(e['key'], e['last'], pct)}",
                format_change(e, pct),
                e["rows"],
                e["steps"],
            ]
        )
    out.table(rows, ["run", "key", "first -> last", "change", "rows", "steps"])
    more = f"; newest {len({e['run_id'] for e in info['per_run']})} runs shown" if info["runs_not_shown"] else ""
    out.line(
        f"{info['metric_rows']} metric rows in {info['series']} series over {info['runs_with_metrics']} runs{more}"
    )


def _registry(out: _Out, info: dict) -> None:
    out.subheading("registered models")
    out.table(
        [[m["name"], m["versions"], m["latest_version"] or "-", m["created"]] for m in info["models"]],
        ["model", "versions", "latest", "created"],
    )
    out.subheading("versions")
    out.table(
        [
            [
                v["name"],
                v["version"],
                v["stage"] or "-",
                v["status"],
                v["run_id"] or "-",
                {True: "yes", False: "MISSING", None: "-"}[v["run_exists"]],
            ]
            for v in info["versions"]
        ],
        ["model", "version", "stage", "status", "run", "run exists"],
    )
    out.subheading("aliases")
    out.table([[a["name"], a["alias"], a["version"]] for a in info["aliases"]], ["model", "alias", "version"])


def _sizes(out: _Out, info: dict) -> None:
    if "files" in info:
        f = info["files"]
        out.table(
            [
                ["database", human_bytes(f["database"])],
                ["wal", human_bytes(f["wal"])],
                ["shm", human_bytes(f["shm"])],
                ["total", human_bytes(info["total_bytes"])],
                ["free pages", human_bytes(info["free_bytes"])],
                ["journal mode", info["journal_mode"]],
            ],
            ["sqlite file", "size"],
        )
    else:
        out.line(f"database {human_bytes(info['database_bytes'])}, tables {human_bytes(info['total_bytes'])}")
    if info.get("tables"):
        out.subheading(f"largest tables (top {TOP_TABLES_BY_SIZE})")
        key = "total_bytes" if "total_bytes" in info["tables"][0] else "bytes"
        out.table(
            [
                [t["table"], human_bytes(t[key])]
                + ([human_bytes(t["table_bytes"]), human_bytes(t["index_bytes"])] if "index_bytes" in t else [])
                for t in info["tables"][:TOP_TABLES_BY_SIZE]
            ],
            ["table", "total"] + (["data", "indexes"] if "index_bytes" in info["tables"][0] else []),
        )
    _artifacts(out, info.get("artifacts") or {})


def _artifacts(out: _Out, art: dict) -> None:
    if "bucket" in art:
        _bucket(out, art)
        return
    out.subheading(f"artifacts in {art.get('artifacts_dir') or '-'}")
    if "note" in art:
        out.line(art["note"])
        return
    out.line(f"{human_bytes(art['total_bytes'])} in {art['files']} files")
    out.table(
        [[e["experiment_id"], human_bytes(e["bytes"]), e["files"]] for e in art["per_experiment"]],
        ["experiment", "size", "files"],
    )
    out.subheading("largest runs")
    out.table(
        [
            [r["experiment_id"], r["run_id"], human_bytes(r["bytes"]), r["files"], "deleted" if r["deleted"] else ""]
            for r in art["per_run"]
        ],
        ["exp", "run", "size", "files", ""],
    )
    out.subheading(f"folders without a run ({len(art['orphan_folders'])})")
    out.table(
        [[o["path"], o["kind"], human_bytes(o["bytes"]), o["files"]] for o in art["orphan_folders"]],
        ["folder", "owner", "size", "files"],
    )
    out.subheading(
        f"runs without an artifact folder ({art['runs_missing_folder_count']}; normal if they logged no artifact)"
    )
    out.table([[m["experiment_id"], m["run_id"]] for m in art["runs_missing_folder"]], ["exp", "run"])
    if art["runs_missing_folder_count"] > len(art["runs_missing_folder"]):
        out.line(f"... {art['runs_missing_folder_count'] - len(art['runs_missing_folder'])} more")
    if art["runs_with_remote_artifacts"]:
        out.line(f"{art['runs_with_remote_artifacts']} run(s) keep artifacts elsewhere (not on this disk)")


def _bucket(out: _Out, art: dict) -> None:
    out.subheading(f"artifacts in {art['bucket']}")
    out.line(f"{human_bytes(art['total_bytes'])} in {art['objects']} objects")
    out.table(
        [
            [e["experiment_id"], human_bytes(e["bytes"]), e["objects"], "" if e["owned"] else "no experiment row"]
            for e in art["per_experiment"]
        ],
        ["experiment", "size", "objects", ""],
    )
    out.subheading("largest runs")
    out.table(
        [
            [r["experiment_id"], r["run_id"], human_bytes(r["bytes"]), r["objects"], "deleted" if r["deleted"] else ""]
            for r in art["per_run"]
        ],
        ["exp", "run", "size", "objects", ""],
    )
    if art["runs_with_artifacts_elsewhere"]:
        out.line(f"{art['runs_with_artifacts_elsewhere']} run(s) keep artifacts outside this bucket")


_WRITERS: dict[str, Callable[[_Out, Any], None]] = {
    "tables": _tables,
    "schema": _schema,
    "integrity": _integrity,
    "workspaces": _workspaces,
    "runs": _runs,
    "metrics": _metrics,
    "registry": _registry,
    "sizes": _sizes,
}
