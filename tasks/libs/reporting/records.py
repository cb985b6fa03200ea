"""What a check run produces: one result per check, latencies against budgets, the report.

Two kinds of report share the writers in checks.reports: the deployment checks' Report and a
SuiteReport for any other suite (the security probes), which names itself and lists its facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"

# Latency budgets in seconds. Over budget is a warning, never a failure.
BUDGETS = {"logging call": 1.0, "model save": 5.0, "UI page": 2.0}


class CheckFailed(Exception):
    """The deployment did something wrong; the message says what, in one line."""


class CheckSkipped(Exception):
    """The check could not run here (no browser, no store given); the message says why."""


@dataclass
class Latency:
    kind: str  # a key of BUDGETS
    label: str  # the call measured, e.g. "log_param learning_rate"
    seconds: float

    @property
    def budget(self) -> float:
        return BUDGETS[self.kind]

    @property
    def over_budget(self) -> bool:
        return self.seconds > self.budget


@dataclass
class CheckResult:
    number: int
    name: str
    status: str
    reason: str
    duration: float
    latencies: list[Latency] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def slowest(self) -> dict[str, Latency]:
        """The slowest measured call of each budget kind."""
        worst: dict[str, Latency] = {}
        for lat in self.latencies:
            if lat.kind not in worst or lat.seconds > worst[lat.kind].seconds:
                worst[lat.kind] = lat
        return worst

    @property
    def warnings(self) -> list[str]:
        return [
            f"{lat.kind} over budget: {lat.label} took {lat.seconds:.2f} s (budget {lat.budget:g} s)"
            for lat in self.latencies
            if lat.over_budget
        ]


class _Outcome:
    """The verdict over a report's checks (shared by both kinds of report)."""

    checks: list[CheckResult]

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def warnings(self) -> list[str]:
        return [f"{c.name}: {w}" for c in self.checks for w in c.warnings]

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (PASS, FAIL, SKIPPED)}


@dataclass
class Report(_Outcome):
    """The deployment checks' report."""

    tracking_uri: str  # masked
    store: str | None  # masked store URI, or None when not checked
    started_at: str
    finished_at: str = ""
    experiment_name: str = ""
    experiment_id: str | None = None
    run_id: str | None = None
    registered_model: str = ""
    prompt: str = ""
    workspace: str | None = None  # the checks' own workspace (a server with workspaces on)
    trace_ids: list[str] = field(default_factory=list)
    report_dir: Path | None = None
    screenshot: Path | None = None
    checks: list[CheckResult] = field(default_factory=list)

    # Class attributes, not fields: the JSON report (asdict) stays as it was.
    suite: ClassVar[str] = "deployment"
    title: ClassVar[str] = "MLflow deployment check"
    latency_column: ClassVar[bool] = True

    def header_lines(self) -> list[str]:
        """The lines under the Markdown title."""
        return [
            f"Server: `{self.tracking_uri}`",
            f"Store: `{self.store}`" if self.store else "Store: not checked",
            f"Experiment: `{self.experiment_name}` (id {self.experiment_id}), run `{self.run_id}`",
            f"Registered model: `{self.registered_model}`, prompt `{self.prompt}`",
            *([f"Traces: {', '.join(f'`{t}`' for t in self.trace_ids)}"] if self.trace_ids else []),
            *([f"Workspace: `{self.workspace}`"] if self.workspace else []),
            f"Started {self.started_at}, finished {self.finished_at}",
        ]

    def properties(self) -> list[tuple[str, str]]:
        """JUnit <properties> (the screenshot is added by the writer, relative to the report)."""
        found = [("tracking_uri", self.tracking_uri), ("experiment", self.experiment_name)]
        return found + ([("workspace", self.workspace)] if self.workspace else [])


@dataclass
class SuiteReport(_Outcome):
    """Any other suite's report (e.g. the security probes): its name, its title and its facts."""

    suite: str  # JUnit classname, "security"
    title: str
    tracking_uri: str  # masked
    started_at: str
    finished_at: str = ""
    facts: dict[str, str] = field(default_factory=dict)  # label -> value, in order
    report_dir: Path | None = None
    checks: list[CheckResult] = field(default_factory=list)

    latency_column: ClassVar[bool] = False

    def header_lines(self) -> list[str]:
        return [
            f"Server: `{self.tracking_uri}`",
            *[f"{label}: {value}" for label, value in self.facts.items()],
            f"Started {self.started_at}, finished {self.finished_at}",
        ]

    def properties(self) -> list[tuple[str, str]]:
        return [("tracking_uri", self.tracking_uri), *self.facts.items()]
