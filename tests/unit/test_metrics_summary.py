"""`inv server.metrics`: the figures read from a /metrics text, quantiles as PromQL computes them."""

from __future__ import annotations

import pytest

from tasks.libs.monitoring.metrics import figures_table, histogram_quantile, request_figures, total_requests

METRICS = """\
# HELP mlflow_http_request_total Total number of HTTP requests
# TYPE mlflow_http_request_total counter
mlflow_http_request_total{method="POST",status="200"} 90.0
mlflow_http_request_total{method="POST",status="404"} 10.0
# HELP mlflow_http_request_duration_seconds Flask HTTP request duration in seconds
# TYPE mlflow_http_request_duration_seconds histogram
mlflow_http_request_duration_seconds_bucket{le="0.01",method="POST",mlflow_version="3.17.2",status="200"} 45.0
mlflow_http_request_duration_seconds_bucket{le="0.1",method="POST",mlflow_version="3.17.2",status="200"} 90.0
mlflow_http_request_duration_seconds_bucket{le="+Inf",method="POST",mlflow_version="3.17.2",status="200"} 90.0
mlflow_http_request_duration_seconds_count{method="POST",mlflow_version="3.17.2",status="200"} 90.0
mlflow_http_request_duration_seconds_sum{method="POST",mlflow_version="3.17.2",status="200"} 2.0
mlflow_http_request_duration_seconds_bucket{le="0.01",method="POST",mlflow_version="3.17.2",status="404"} 10.0
mlflow_http_request_duration_seconds_bucket{le="0.1",method="POST",mlflow_version="3.17.2",status="404"} 10.0
mlflow_http_request_duration_seconds_bucket{le="+Inf",method="POST",mlflow_version="3.17.2",status="404"} 10.0
mlflow_http_request_duration_seconds_count{method="POST",mlflow_version="3.17.2",status="404"} 10.0
mlflow_http_request_duration_seconds_sum{method="POST",mlflow_version="3.17.2",status="404"} 0.05
"""


def test_metrics_summary_by_method_and_status_with_quantiles():
    figures = request_figures(METRICS)
    assert [(g.method, g.status, g.requests) for g in figures] == [("POST", "200", 90.0), ("POST", "404", 10.0)]
    assert total_requests(METRICS, method="POST", status="200") == 90.0
    # half of the 200s took <= 10 ms: PromQL interpolates the median to the bucket's upper edge
    assert figures[0].quantile(0.5) == pytest.approx(0.01)
    rows, headers = figures_table(figures)
    assert headers[:3] == ["method", "status", "requests"] and rows[-1][:3] == ["all", "", "100"]


def test_histogram_quantile_interpolates_like_promql():
    buckets = {0.1: 50.0, 0.5: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.99, {0.1: 0.0, float("inf"): 10.0}) == 0.1  # in +Inf: the last finite bound
    assert histogram_quantile(0.5, {}) is None
