"""The scale preset's spec (ScaleSpec, load_scale_spec), the server measured (ScaleTarget), and the
targets a results document is judged against (scale_targets)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.libs.bench.runner import Target
from tasks.libs.bench.stats import ratio
from tasks.libs.bench.workload import WorkloadSpec
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings


@dataclass
class ScaleSpec:
    name: str
    run_counts: list[int]
    search_calls: int
    get_run_calls: int
    ui_loads: int
    history_points: int
    history_calls: int
    traces: int
    spans_per_trace: int
    artifact_mib: int
    load_batch: int
    raw: dict[str, float]
    request_timeout_s: float = 600
    levers: bool = True

    @classmethod
    def from_preset(cls, name: str, data: dict) -> ScaleSpec:
        known = set(cls.__dataclass_fields__) - {"name"}
        unknown = set(data) - known - {"kind"}
        if unknown:
            raise UserError(
                f"preset {name!r}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        try:
            spec = cls(name=name, **{k: v for k, v in data.items() if k != "kind"})
        except TypeError as exc:
            raise UserError(f"preset {name!r} is incomplete ({exc})") from None
        if not spec.run_counts or min(spec.run_counts) < 1 or spec.run_counts != sorted(spec.run_counts):
            raise UserError(f"preset {name!r}: run_counts must be ascending counts >= 1")
        return spec

    def workload_view(self) -> WorkloadSpec:
        """What the shared helpers (raw inserts) read from a spec."""
        return WorkloadSpec(
            name=self.name,
            ops={},
            clients=[1],
            repetitions=1,
            seed_runs=0,
            warmup={},
            warmup_clients=1,
            phase_timeout_s=self.request_timeout_s,
            request_timeout_s=self.request_timeout_s,
            raw=self.raw,
        )


@dataclass
class ScaleTarget:
    target: Target
    experiment_id: str = ""
    artifact_location: str = ""
    history_run: str = ""
    run_prefix: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def settings(self) -> Settings:
        return self.target.settings

    @property
    def url(self) -> str:
        return self.target.url


def load_scale_spec(preset: str, path: Path | str | None = None) -> ScaleSpec | None:
    """The preset as a ScaleSpec when benchmarks/workload.yaml marks it `kind: scale`, else None."""
    import yaml

    from tasks.libs.bench.workload import SPEC_FILE

    path = Path(path) if path else SPEC_FILE
    try:
        presets = (yaml.safe_load(path.read_text()) or {}).get("presets") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the workload file ({exc})") from None
    data = presets.get(preset)
    if not isinstance(data, dict) or data.get("kind") != "scale":
        return None
    return ScaleSpec.from_preset(preset, data)


# --- targets -----------------------------------------------------------------------------------


def scale_targets(doc: dict) -> list[dict[str, Any]]:
    """The issue's scale targets, per backend: search_runs p50 at the largest store, the upload rate
    against loopback, and the server's peak RSS during the upload against its idle RSS."""
    out = []
    figures = doc["figures"]
    for backend in doc["meta"]["backends"]:
        mine = [f for f in figures if f["backend"] == backend]
        largest = max((f["scale"] for f in mine if f["figure"] == "search_runs"), key=_scale_key, default=None)

        def pick(setup: str, figure: str, scale: str | None = None) -> dict | None:
            return next(
                (
                    f
                    for f in mine
                    if f["setup"] == setup and f["figure"] == figure and (scale is None or f["scale"] == scale)
                ),
                None,
            )

        tuned, stock = pick("tuned", "search_runs", largest), pick("stock", "search_runs", largest)
        value = ratio(tuned["p50_ms"], stock["p50_ms"]) if tuned and stock else math.nan
        bound = ratio(tuned["limit_p50_ms"], tuned["p50_ms"]) if tuned else math.nan
        out.append(_target(backend, f"search_runs p50 at {largest}, tuned/stock", "<=", 0.5, value,
                           f"the same SQL takes {bound:.0%} of tuned's p50" if not math.isnan(bound) else ""))  # fmt: skip
        upload = next((f for f in mine if f["setup"] == "tuned" and f["figure"].endswith("artifact upload")), None)
        out.append(_target(backend, "artifact upload rate / loopback copy rate (tuned)", ">=", 0.5,
                           ratio(upload["rate"], upload["limit_rate"]) if upload else math.nan, ""))  # fmt: skip
        out.append(_target(backend, "server peak RSS during the upload / idle RSS (tuned)", "<", 2.0,
                           ratio(upload["peak_rss"], upload["idle_rss"]) if upload else math.nan, ""))  # fmt: skip
    return out


def _target(backend: str, name: str, direction: str, threshold: float, value: float, where: str) -> dict[str, Any]:
    met = not math.isnan(value) and (
        value <= threshold if direction == "<=" else value < threshold if direction == "<" else value >= threshold
    )
    return {
        "target": name,
        "backend": backend,
        "direction": direction,
        "threshold": threshold,
        "value": value,
        "where": where,
        "met": met,
    }


def _scale_key(scale: str) -> int:
    return int(scale.split(" ")[0].replace(",", ""))
