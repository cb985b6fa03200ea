"""What a deployment check run produces: one result per check, latencies against budgets, the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class Report:
    tracking_uri: str  # masked
    store: str | None  # masked store URI, or None when not checked
    started_at: str
    finished_at: str = ""
    experiment_name: str = ""
    experiment_id: str | None = None
    run_id: str | None = None
    registered_model: str = ""
    report_dir: Path | None = None
    screenshot: Path | None = None
    checks: list[CheckResult] = field(default_factory=list)

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
