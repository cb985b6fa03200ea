"""The key figures in a server's /metrics (MLflow's --expose-prometheus), for `inv server.metrics`.

What MLflow 3.17 exports (prometheus-flask-exporter, summed over the uvicorn workers through
prometheus_client's multiprocess folder): mlflow_http_request_total{method,status} and the
histogram mlflow_http_request_duration_seconds{method,status,mlflow_version}. There is no
endpoint label (MLflow groups by its version), so "by endpoint" can only mean by method and
status. /health, /version, /metrics and the proxied artifact routes are not counted.
"""

from __future__ import annotations

import math
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from tasks.libs.core.errors import UserError

REQUESTS = "mlflow_http_request"  # the family name (its samples end in _total)
DURATION = "mlflow_http_request_duration_seconds"


@dataclass
class RequestFigures:
    """Requests of one (method, status): the count, and latency quantiles from the histogram."""

    method: str
    status: str
    requests: float
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.buckets)


def fetch_metrics(url: str, timeout: float = 5, *, ca: str | None = None) -> str:
    """GET <url>/metrics (https verified with ca, else the system's trust store), or a one-line
    UserError saying why not."""
    context = ssl.create_default_context(cafile=ca) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout, context=context) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:
        hint = " (is server.metrics on? `inv server.restart` after setting it)" if exc.code == 404 else ""
        raise UserError(f"{url}/metrics answered HTTP {exc.code}{hint}") from None
    except OSError as exc:
        raise UserError(f"no server answers at {url} ({getattr(exc, 'reason', exc)}); is it running?") from None


def request_figures(text: str) -> list[RequestFigures]:
    """Per (method, status), sorted; the counter and the histogram joined."""
    groups: dict[tuple[str, str], RequestFigures] = {}

    def group(labels: dict[str, str]) -> RequestFigures:
        key = (labels.get("method", "?"), labels.get("status", "?"))
        return groups.setdefault(key, RequestFigures(key[0], key[1], 0.0))

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == REQUESTS and sample.name == f"{REQUESTS}_total":
                group(sample.labels).requests += sample.value
            elif family.name == DURATION and sample.name == f"{DURATION}_bucket":
                le = math.inf if sample.labels["le"] == "+Inf" else float(sample.labels["le"])
                buckets = group(sample.labels).buckets
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return [groups[key] for key in sorted(groups)]


def total_requests(text: str, *, method: str | None = None, status: str | None = None) -> float:
    """mlflow_http_request_total summed over the label values asked for."""
    return sum(
        g.requests
        for g in request_figures(text)
        if (method is None or g.method == method) and (status is None or g.status == status)
    )


def figures_table(figures: list[RequestFigures]) -> tuple[list[list[str]], list[str]]:
    """Rows and headers: one row per method and status, and the total."""
    everything = RequestFigures("all", "", sum(g.requests for g in figures))
    for g in figures:
        for le, count in g.buckets.items():
            everything.buckets[le] = everything.buckets.get(le, 0.0) + count
    rows = [
        [g.method, g.status, f"{g.requests:.0f}", *(_ms(g.quantile(q)) for q in (0.5, 0.95, 0.99))]
        for g in [*figures, everything]
    ]
    return rows, ["method", "status", "requests", "p50 ms", "p95 ms", "p99 ms"]


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative buckets: linear inside the bucket that holds
    the rank; the highest finite bound when the rank falls in +Inf. Cumulative since the server
    started: over a time window, Prometheus' rate() is the tool."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    lower, below = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"
