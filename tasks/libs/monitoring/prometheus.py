"""A Prometheus scrape config and alert rules for what we run, checked with promtool.

`write_prometheus_files` is the one entry point: `cluster.up` calls it, and so can anything
else that describes a deployment. Series the rules rely on (measured: MLflow 3.17.2 with
prometheus-flask-exporter 0.23, HAProxy 2.6's built-in exporter, prometheus-postgres-exporter
0.11):
- MLflow: mlflow_http_request_total{method,status},
  mlflow_http_request_duration_seconds_bucket{method,status,mlflow_version,le}. Each replica has
  its own /metrics (summed over its workers), so every replica is scraped, never the LB.
- HAProxy: haproxy_server_status{proxy,server,state} (1 for the current state),
  haproxy_backend_active_servers{proxy}.
- postgres_exporter: pg_up, pg_stat_activity_count{datname,state,server},
  pg_settings_max_connections{server}, pg_settings_superuser_reserved_connections{server},
  pg_stat_replication_pg_wal_lsn_diff{application_name}.
`rule_files` is resolved relative to the config file, so it names the rules file bare.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.libs.core.errors import UserError
from tasks.libs.core.programs import find_program
from tasks.libs.core.settings.monitoring import MonitoringSettings

CONFIG_FILE = "prometheus.yml"
RULES_FILE = "mlflow-ops.rules.yml"


@dataclass
class ScrapeTargets:
    """host:port of everything to scrape."""

    mlflow: list[str]  # every server or replica itself
    haproxy: str | None = None  # the stats frontend (its /metrics is HAProxy's exporter)
    haproxy_backend: str = ""  # the HAProxy backend whose servers are the replicas (the alerts name it)
    postgres_exporter: str | None = None
    labels: dict[str, str] = field(default_factory=lambda: {"deployment": "mlflow-ops"})


@dataclass
class PrometheusFiles:
    config: Path
    rules: Path
    checked: list[str]  # promtool's verdicts, or why nothing was checked


def scrape_config(targets: ScrapeTargets, monitoring: MonitoringSettings) -> dict[str, Any]:
    def job(name: str, hosts: list[str]) -> dict[str, Any]:
        # a fresh labels dict per job: a shared one comes out as YAML anchors (&id001)
        return {"job_name": name, "static_configs": [{"targets": list(hosts), "labels": dict(targets.labels)}]}

    jobs = [job("mlflow", targets.mlflow)]
    if targets.haproxy:
        jobs.append(job("haproxy", [targets.haproxy]))
    if targets.postgres_exporter:
        jobs.append(job("postgres", [targets.postgres_exporter]))
    interval = monitoring.scrape_interval
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [RULES_FILE],
        "scrape_configs": jobs,
    }


def alert_rules(monitoring: MonitoringSettings, *, haproxy_backend: str | None, postgres: bool) -> dict[str, Any]:
    """Server down, 5xx rate, p95 latency; replicas down in HAProxy; PostgreSQL connections near
    the limit and standby lag (those need postgres_exporter's series)."""
    t, down = monitoring.thresholds, monitoring.down_for
    rules = [
        _alert(
            "MlflowServerDown",
            'up{job="mlflow"} == 0',
            down,
            "critical",
            "MLflow server {{ $labels.instance }} does not answer /metrics",
        ),
        _alert("MlflowAllServersDown", 'sum(up{job="mlflow"}) == 0', "1m", "critical", "No MLflow server answers"),
        _alert(
            "MlflowHigh5xxRate",
            'sum by (instance) (rate(mlflow_http_request_total{status=~"5.."}[5m]))'
            f" / sum by (instance) (rate(mlflow_http_request_total[5m])) > {t.error_ratio}",
            "5m",
            "warning",
            f"More than {t.error_ratio:.0%} of requests on {{{{ $labels.instance }}}} fail with 5xx",
        ),
        _alert(
            "MlflowHighP95Latency",
            "histogram_quantile(0.95, sum by (instance, le) (rate(mlflow_http_request_duration_seconds_bucket[5m])))"
            f" > {t.p95_seconds}",
            "10m",
            "warning",
            "p95 latency on {{ $labels.instance }} is {{ $value | humanizeDuration }}",
        ),
    ]
    if haproxy_backend:
        rules += [
            _alert(
                "HaproxyReplicaDown",
                f'haproxy_server_status{{proxy="{haproxy_backend}",state="UP"}} == 0',
                down,
                "warning",
                "HAProxy sees replica {{ $labels.server }} as not UP",
            ),
            _alert(
                "HaproxyNoReplica",
                f'haproxy_backend_active_servers{{proxy="{haproxy_backend}"}} == 0',
                down,
                "critical",
                "HAProxy has no live MLflow replica",
            ),
        ]
    if postgres:
        rules += [
            _alert("PostgresDown", "pg_up == 0", "1m", "critical", "postgres_exporter cannot reach PostgreSQL"),
            _alert(
                "PostgresConnectionsNearLimit",
                "sum by (server) (pg_stat_activity_count)"
                " / on (server) (pg_settings_max_connections - pg_settings_superuser_reserved_connections)"
                f" > {t.connections_ratio}",
                "5m",
                "warning",
                "{{ $labels.server }} uses {{ $value | humanizePercentage }} of its connections",
            ),
            _alert(
                "PostgresStandbyLagging",
                f"pg_stat_replication_pg_wal_lsn_diff > {t.replica_lag_bytes}",
                "5m",
                "warning",
                "standby {{ $labels.application_name }} is {{ $value | humanize1024 }}B behind",
            ),
        ]
    return {"groups": [{"name": "mlflow-ops", "rules": rules}]}


def _alert(name: str, expr: str, for_: str, severity: str, summary: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary},
    }


def write_prometheus_files(
    out_dir: Path, targets: ScrapeTargets, monitoring: MonitoringSettings, *, postgres: bool, check: bool = True
) -> PrometheusFiles:
    """Write prometheus.yml and the alert rules into out_dir; with check, promtool must pass them
    (a UserError names what it refused). Without promtool installed nothing is checked, and
    PrometheusFiles.checked says so."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rules = out_dir / RULES_FILE
    config = out_dir / CONFIG_FILE
    rules.write_text(
        yaml.safe_dump(
            alert_rules(monitoring, haproxy_backend=targets.haproxy and targets.haproxy_backend, postgres=postgres),
            sort_keys=False,
        )
    )
    config.write_text(yaml.safe_dump(scrape_config(targets, monitoring), sort_keys=False))
    checked = promtool_check(config, rules) if check else ["not checked"]
    return PrometheusFiles(config, rules, checked)


def promtool_check(config: Path, rules: Path) -> list[str]:
    """`promtool check config` (which also checks the rules it names) and `check rules`."""
    if find_program("promtool") is None:
        return ["not checked: promtool is not installed (`inv deps`, Debian package prometheus)"]
    verdicts = []
    for args in (["check", "config", str(config)], ["check", "rules", str(rules)]):
        result = promtool(*args)
        if result.returncode != 0:
            raise UserError(f"promtool {' '.join(args[:2])} refused {Path(args[2]).name}: {promtool_reason(result)}")
        verdicts.append(f"promtool {' '.join(args[:2])}: SUCCESS")
    return verdicts


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = find_program("promtool")
    if path is None:
        raise UserError("promtool is not installed: `inv deps` (Debian package prometheus)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


def promtool_reason(result: subprocess.CompletedProcess[str]) -> str:
    """The line of promtool's output that says what failed."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "FAILED" in line:
            # promtool puts the reason after "FAILED:", on the same line or on the next
            rest = line.split("FAILED:", 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[-1] if lines else f"exit {result.returncode}"
