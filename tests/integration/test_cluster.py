"""A whole cluster on the session's PostgreSQL, started once for the module: 2 replicas (2 workers,
metrics on) behind HAProxy terminating TLS with the tool's private CA, PgBouncer, a synchronous
streaming standby as read replica, the embedded S3 in proxied mode, postgres_exporter and Redis
for MLflow's jobs."""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import ssl
import stat
import threading
import urllib.request

import pytest
import requests
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from tasks.libs.artifacts.s3 import EmbeddedS3
from tasks.libs.cluster.haproxy import Haproxy
from tasks.libs.cluster.orchestrate import cluster_down, cluster_status, cluster_up
from tasks.libs.cluster.pgbouncer import PgBouncer
from tasks.libs.cluster.plan import replica_plans
from tasks.libs.cluster.standby import Standby, with_standby
from tasks.libs.core import certificates, tls
from tasks.libs.core.processes import port_is_free
from tasks.libs.monitoring.metrics import fetch_metrics, total_requests
from tasks.libs.monitoring.prometheus import promtool_check
from tasks.libs.postgres.connection import pg_connection
from tasks.libs.security.suite import all_probes, run_security
from tasks.libs.security.target import target_from_settings
from tests.support.cli import hermetic_env, inv, pid_files, processes_in
from tests.support.cluster import cluster_settings, log_through, stored_steps
from tests.support.jobs import job_server_env, submit_add, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(pg_settings):
    settings = cluster_settings(
        pg_settings,
        "mlflow_cluster",
        {
            "cluster.pgbouncer.enabled": True,
            "cluster.read_replica.enabled": True,
            "artifacts.store": "s3",
            "server.metrics": True,
            "monitoring.postgres_exporter.enabled": True,
            "server.env": job_server_env(),
            "cluster.tls": True,
        },
    )
    lines: list[str] = []
    try:
        result = cluster_up(settings, say=lines.append)
        yield settings, result, lines
    finally:
        cluster_down(settings, wipe=True)
        left = processes_in(settings.state_path)
        assert left == [], f"still running: {[p.cmdline()[:3] for p in left]}"
        assert pid_files(settings.state_path) == []
        assert all(port_is_free("127.0.0.1", p.port) for p in replica_plans(settings))
        with pg_connection(settings, dbname="postgres") as conn, conn.cursor() as cur:
            cur.execute("SHOW synchronous_standby_names")
            assert cur.fetchone()[0] == ""  # the session's PostgreSQL takes writes without a standby again
            cur.execute("SELECT count(*) FROM pg_replication_slots")
            assert cur.fetchone()[0] == 0
        shutil.rmtree(settings.state_path, ignore_errors=True)


def printed_ca(lines: list[str]) -> str:
    """The CA cluster.up told clients to trust."""
    found = [re.search(r"clients trust (\S+)$", line) for line in lines if line.startswith("TLS: HAProxy serves")]
    assert found and found[0], lines
    return found[0].group(1)


@pytest.fixture(scope="module")
def experiment(cluster):
    settings, result, lines = cluster
    answer = requests.post(
        f"{result.url}/api/2.0/mlflow/experiments/create",
        json={"name": "cluster"},
        timeout=60,
        verify=printed_ca(lines),
    )
    answer.raise_for_status()
    return answer.json()["experiment_id"]


def test_up_starts_r0_alone_then_the_rest_and_status_shows_every_replica_up(cluster):
    settings, result, lines = cluster
    assert result.started == ["r0", "r1"]
    assert [line.split(" ready")[0] for line in lines if " ready in " in line] == ["r0", "r1"]
    state = cluster_status(settings)
    assert [(r["replica"], r["haproxy"], r["health"]) for r in state["replicas"]] == [
        ("r0", "UP", "ok"),
        ("r1", "UP", "ok"),
    ]
    assert state["running"] and not state["degraded"]
    assert state["info"]["standby_state"] == "streaming (sync)"
    assert "clients active" in state["info"]["pgbouncer"]
    assert EmbeddedS3(settings).running() is not None


def test_a_write_through_one_replica_is_read_back_through_the_other(cluster, experiment):
    settings, _, _ = cluster
    r0, r1 = replica_plans(settings)
    misses = []
    for i in range(20):
        writer, reader = (r0, r1) if i % 2 == 0 else (r1, r0)
        run = requests.post(f"{writer.url}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment}, timeout=30)
        run_id = run.json()["run"]["info"]["run_id"]
        body = {"run_id": run_id, "key": "m", "value": float(i), "timestamp": 0, "step": i}
        assert requests.post(f"{writer.url}/api/2.0/mlflow/runs/log-metric", json=body, timeout=30).status_code == 200
        history = requests.get(
            f"{reader.url}/api/2.0/mlflow/metrics/get-history", params={"run_id": run_id, "metric_key": "m"}, timeout=30
        ).json()
        if [m["value"] for m in history.get("metrics", [])] != [float(i)]:
            misses.append((writer.name, reader.name, history))
    assert misses == []


def test_k_requests_raise_the_request_counter_by_k_across_workers(cluster, experiment):
    settings, _, _ = cluster
    r0 = replica_plans(settings)[0]
    run = requests.post(f"{r0.url}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment}, timeout=30)
    run_id = run.json()["run"]["info"]["run_id"]
    before = total_requests(fetch_metrics(r0.url), method="POST", status="200")
    k = 40
    for step in range(k):  # a new connection each: uvicorn's workers share them out
        body = {"run_id": run_id, "key": "k", "value": 1.0, "timestamp": 0, "step": step}
        assert requests.post(f"{r0.url}/api/2.0/mlflow/runs/log-metric", json=body, timeout=30).status_code == 200
    after = total_requests(fetch_metrics(r0.url), method="POST", status="200")
    assert after - before == k
    writers = {path.name.split("_")[-1] for path in r0.metrics_dir.glob("counter_*.db")}
    assert len(writers) >= 2, f"one worker served every request: {writers}"


def test_pgbouncer_keeps_postgres_connections_within_its_pool_under_eight_clients(cluster, experiment):
    settings, result, lines = cluster
    pool = PgBouncer(settings).running()
    assert pool is not None
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        with pg_connection(settings, dbname="postgres", autocommit=True) as conn, conn.cursor() as cur:
            while not done.is_set():
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                    (settings.postgres.database,),
                )
                samples.append(cur.fetchone()[0])
                done.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        logged = log_through(result.url, experiment, clients=8, calls=25, verify=printed_ca(lines))
    finally:
        done.set()
        sampler.join()
    assert logged.errors == [] and logged.count == 200
    assert len(samples) >= 10 and 1 <= max(samples) <= pool.pool_size, samples
    for run_id, steps in logged.acked.items():
        assert set(steps) <= stored_steps(settings, run_id)


def test_reads_go_to_the_standby_and_db_status_shows_its_lag(cluster, experiment):
    settings, result, lines = cluster
    for _ in range(10):
        answer = requests.post(
            f"{result.url}/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [experiment], "max_results": 5},
            timeout=30,
            verify=printed_ca(lines),
        )
        assert answer.status_code == 200 and answer.json()["runs"]
    standby = Standby(settings)
    with pg_connection(settings, port=settings.cluster.read_replica.port) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is True
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()",
            (settings.postgres.database,),
        )
        assert cur.fetchone()[0] >= 1  # the replicas' read pools are connected to the standby
        cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(experiment),))
        assert cur.fetchone()[0] >= 20  # what the other tests wrote, replayed
    shown = with_standby(settings, {"running": True})
    assert shown["standby_state"] == "streaming (sync)"
    assert isinstance(shown["standby_replay_lag_bytes"], int) and shown["standby_replay_lag_bytes"] >= 0
    assert isinstance(shown["standby_replay_lag_s"], float)
    assert standby.running()


def test_prometheus_files_scrape_every_replica_and_pass_promtool(cluster):
    settings, result, _ = cluster
    assert result.prometheus is not None
    config = yaml.safe_load(result.prometheus.config.read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["mlflow"] == [f"127.0.0.1:{p.port}" for p in replica_plans(settings)]
    assert jobs["haproxy"] == [f"127.0.0.1:{settings.cluster.lb.stats_port}"]
    assert jobs["postgres"] == [f"127.0.0.1:{settings.monitoring.postgres_exporter.port}"]
    assert promtool_check(result.prometheus.config, result.prometheus.rules)[0].endswith("SUCCESS")
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.monitoring.postgres_exporter.port}/metrics") as resp:
        exported = resp.read().decode()
    assert "\npg_up 1" in exported and "pg_stat_activity_count{" in exported
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.cluster.lb.stats_port}/metrics") as resp:
        assert 'haproxy_server_status{proxy="replicas",server="r1",state="UP"} 1' in resp.read().decode()
    assert Haproxy(settings).states()["r0"]["status"] == "UP"


def test_jobs_submitted_through_the_load_balancer_run_on_the_shared_redis(cluster):
    """Jobs are on by default: every replica runs huey on the cluster's Redis, and a job submitted
    through HAProxy (round robin: both replicas take submissions) runs to its result."""
    settings, result, lines = cluster
    assert any(line.startswith("Redis on ") for line in lines)
    assert "answers PING" in cluster_status(settings)["info"]["redis"]
    ca = printed_ca(lines)  # the load balancer speaks https with the tool's private CA
    ids = [submit_add(result.url, x, 10, verify=ca) for x in range(4)]
    done = [wait_for_job(result.url, job_id, timeout=240, verify=ca) for job_id in ids]
    assert [(j["status"], j["result"]) for j in done] == [("SUCCEEDED", x + 10) for x in range(4)]


def test_the_load_balancer_answers_https_with_our_certificate_and_refuses_plain_http(cluster):
    settings, result, lines = cluster
    ca = printed_ca(lines)
    assert result.url == f"https://127.0.0.1:{settings.cluster.lb.port}"
    assert requests.get(f"{result.url}/health", timeout=10, verify=ca).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{result.url}/health", timeout=10)  # without the CA: refused, never trusted blindly
    context = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection(("127.0.0.1", settings.cluster.lb.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        served = conn.getpeercert(binary_form=True)
    assert served == certificates.load_cert(tls.tls_files(settings).cert).public_bytes(Encoding.DER)
    # plain HTTP on the same port: the connection is closed without an HTTP answer
    plain = http.client.HTTPConnection("127.0.0.1", settings.cluster.lb.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/health")
        plain.getresponse()
    plain.close()
    # the replicas behind it stay plain HTTP on loopback
    assert all(p.url.startswith("http://127.0.0.1:") for p in replica_plans(settings))
    assert "HAProxy terminates it" in cluster_status(settings)["info"]["tls"]
    # the pem HAProxy reads is private and only its path is in the config
    pem = settings.state_path / "secrets" / "tls" / "haproxy.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    config = Haproxy(settings).cfg.read_text()
    assert f"ssl crt {pem}" in config and "PRIVATE KEY" not in config


def test_deployment_checks_pass_through_the_https_load_balancer_with_the_printed_ca(cluster, state_dir, tmp_path):
    """`inv test.deployment --url https://<lb> --ca <the CA cluster.up printed>`, as a user runs it."""
    _, result, lines = cluster
    done = inv(
        "test.deployment", "--url", result.url, "--ca", printed_ca(lines), "--browser", "none",
        "--report-dir", str(tmp_path), env=hermetic_env(state_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7. model registry: PASS" in done.stdout


def test_the_tls_probes_pass_through_the_load_balancer(cluster):
    settings, result, _ = cluster
    target = target_from_settings(settings, url=result.url)
    assert [name for name, _ in target.behind] == ["HAProxy", "replica r0", "replica r1"]
    report = run_security(target, probes=[p for p in all_probes() if p.name in ("plain HTTP", "certificate")])
    assert [(c.name, c.status) for c in report.checks] == [("plain HTTP", "PASS"), ("certificate", "PASS")], [
        c.reason for c in report.checks
    ]
    assert "on loopback only" in report.checks[0].reason


def test_replicas_answering_plain_http_beyond_loopback_fail_the_plain_http_probe(pg_settings):
    """TLS on the load balancer, but the replicas bound to every interface (cluster.host 0.0.0.0):
    clients on other machines could go around HAProxy's TLS. cluster.up warns; the probe FAILs."""
    settings = cluster_settings(
        pg_settings, "mlflow_cluster_open", {"cluster.tls": True, "cluster.host": "0.0.0.0", "server.workers": 1}, 1
    )
    lines: list[str] = []
    try:
        result = cluster_up(settings, say=lines.append)
        assert any(line.startswith("WARNING: HAProxy terminates TLS but the replicas") for line in lines), lines
        target = target_from_settings(settings, url=result.url)
        report = run_security(target, probes=[p for p in all_probes() if p.name == "plain HTTP"])
        (probe,) = report.checks
        assert probe.status == "FAIL", probe.reason
        port = settings.cluster.first_port
        assert f"replica r0 answers plain HTTP ('HTTP/1.1 200 OK') on 0.0.0.0:{port}" in probe.reason
    finally:
        cluster_down(settings, wipe=True)
        shutil.rmtree(settings.state_path, ignore_errors=True)
