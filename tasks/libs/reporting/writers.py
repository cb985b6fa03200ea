"""Write a check report as a terminal table, Markdown, JSON and JUnit XML.

Both kinds of report go through here: the deployment checks' Report and a SuiteReport
(the security probes), which has no latency column and lists its own facts. A report holds
masked URIs only (the runners redact every reason), so nothing here ever sees a password.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.state import ensure_state_dir
from tasks.libs.reporting.formats import new_report_dir, table
from tasks.libs.reporting.records import BUDGETS, FAIL, SKIPPED, CheckResult, Report, SuiteReport

AnyReport = Report | SuiteReport

HEADERS = ["#", "check", "result", "time", "latency (budget)", "reason"]
LATENCY = HEADERS.index("latency (budget)")


def latency_cell(result: CheckResult) -> str:
    """'logging call 0.02 s (1 s)' per budget kind, with WARNING when the slowest is over."""
    cells = []
    for kind, lat in result.slowest().items():
        warn = " WARNING" if lat.over_budget else ""
        cells.append(f"{kind} {lat.seconds:.2f} s ({BUDGETS[kind]:g} s){warn}")
    return "; ".join(cells)


def headers(report: AnyReport) -> list[str]:
    return HEADERS if report.latency_column else HEADERS[:LATENCY] + HEADERS[LATENCY + 1 :]


def table_rows(report: AnyReport, *, wrap: int | None = None) -> list[list[str]]:
    rows = []
    for c in report.checks:
        reason = c.reason if wrap is None or len(c.reason) <= wrap else c.reason[: wrap - 3] + "..."
        row = [str(c.number), c.name, c.status, f"{c.duration:.2f} s", latency_cell(c), reason]
        rows.append(row if report.latency_column else row[:LATENCY] + row[LATENCY + 1 :])
    return rows


def summary_line(report: AnyReport) -> str:
    counts = report.counts()
    verdict = "FAILED" if report.failed else "OK"
    warn = f", {len(report.warnings)} latency warning(s)" if report.warnings else ""
    return (
        f"{verdict}: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIPPED']} skipped{warn} "
        f"against {report.tracking_uri}"
    )


def format_table(report: AnyReport) -> str:
    """The terminal view: one row per check, then warnings and the summary."""
    others = 90 if report.latency_column else 45  # room the other columns take
    width = max(40, os.get_terminal_size(1).columns - others) if os.isatty(1) else 120
    lines = [table(table_rows(report, wrap=width), headers(report))]
    lines += [f"WARNING {w}" for w in report.warnings]
    lines.append(summary_line(report))
    return "\n".join(lines)


def report_dir_for(settings: Settings, prefix: str, given: str | Path | None = None) -> Path:
    """The folder a report goes to, made now: given, else <state_dir>/reports/<prefix>-<time>."""
    try:
        if given:
            path = Path(given)
            path.mkdir(parents=True, exist_ok=True)
            return path
        ensure_state_dir(settings)  # with the tool's mode, not mkdir(parents=True)'s default
        return new_report_dir(settings.state_path / "reports", prefix)
    except OSError as exc:
        where = given or settings.state_path / "reports"
        raise UserError(f"cannot create report directory {where}: {exc.strerror}") from None


def write_reports(report: AnyReport, report_dir: Path) -> dict[str, Path]:
    """report.md, report.json and junit.xml in report_dir (the screenshot is already there)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": report_dir / "report.md",
        "json": report_dir / "report.json",
        "junit": report_dir / "junit.xml",
    }
    paths["markdown"].write_text(to_markdown(report))
    paths["json"].write_text(json.dumps(to_dict(report), indent=2) + "\n")
    ET.ElementTree(to_junit(report)).write(paths["junit"], encoding="utf-8", xml_declaration=True)
    return paths


def to_dict(report: AnyReport) -> dict:
    data = asdict(report)
    data["report_dir"] = str(report.report_dir) if report.report_dir else None
    if isinstance(report, Report):
        data["screenshot"] = _screenshot_name(report)
    data["summary"] = {**report.counts(), "ok": report.ok, "warnings": report.warnings}
    for check, result in zip(data["checks"], report.checks):
        for lat, measured in zip(check["latencies"], result.latencies):
            lat.update(budget=measured.budget, over_budget=measured.over_budget)
    return data


def to_markdown(report: AnyReport) -> str:
    rows = [[cell.replace("|", "\\|") for cell in row] for row in table_rows(report)]
    parts = [
        f"# {report.title}",
        "",
        *[f"- {line}" for line in report.header_lines()],
        "",
        f"**{summary_line(report)}**",
        "",
        table(rows, headers(report), markdown=True),
        "",
    ]
    if report.warnings:
        parts += ["## Latency warnings", "", *[f"- {w}" for w in report.warnings], ""]
    name = _screenshot_name(report)
    if name:
        parts += ["## Web UI", "", f"![experiment runs page]({name})", ""]
    return "\n".join(parts)


def to_junit(report: AnyReport) -> ET.Element:
    counts = report.counts()
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"mlflow-ops {report.suite} checks",
        tests=str(len(report.checks)),
        failures=str(counts[FAIL]),
        errors="0",
        skipped=str(counts[SKIPPED]),
        time=f"{sum(c.duration for c in report.checks):.3f}",
        timestamp=report.started_at,
    )
    props = ET.SubElement(suite, "properties")
    properties = report.properties()
    if isinstance(report, Report):  # the deployment checks name their screenshot, also when there is none
        properties.append(("screenshot", _screenshot_name(report) or ""))
    for key, value in properties:
        ET.SubElement(props, "property", name=key, value=value)
    for c in report.checks:
        case = ET.SubElement(
            suite, "testcase", classname=report.suite, name=f"{c.number:02d} {c.name}", time=f"{c.duration:.3f}"
        )
        if c.status == FAIL:
            ET.SubElement(case, "failure", message=c.reason, type="CheckFailed").text = c.details.get(
                "traceback", c.reason
            )
        elif c.status == SKIPPED:
            ET.SubElement(case, "skipped", message=c.reason)
        out = [c.reason, *[f"{lat.kind}: {lat.label} {lat.seconds:.3f} s" for lat in c.latencies], *c.warnings]
        ET.SubElement(case, "system-out").text = "\n".join(out)
    return suites


def _screenshot_name(report: AnyReport) -> str | None:
    shot = report.screenshot if isinstance(report, Report) else None
    if shot is None or not Path(shot).is_file():
        return None
    try:
        return str(Path(shot).relative_to(report.report_dir)) if report.report_dir else str(shot)
    except ValueError:
        return str(shot)
