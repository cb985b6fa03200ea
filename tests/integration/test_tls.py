"""server.tls end to end: a real HTTPS `mlflow server` on SQLite started through the CLI with the
tool's own CA, proven by the deployment checks (the browser included) with the CA it printed,
refusing clients that do not trust it, and keeping its keys out of every log, report and argv."""

from __future__ import annotations

import datetime as dt
import http.client
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tasks.libs.checks.runner import all_checks, run_checks
from tasks.libs.checks.ui import Page, open_and_find
from tasks.libs.core import certificates, tls
from tasks.libs.core.settings import Settings, load_settings
from tasks.libs.reporting.records import FAIL, PASS, CheckFailed
from tasks.libs.security.suite import all_probes, run_security
from tasks.libs.security.target import Target
from tests.support.cli import hermetic_env, inv
from tests.support.settings import make_state_dir
from tests.support.tls import https_server as serving

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"


@dataclass
class HttpsServer:
    settings: Settings
    env: dict[str, str]
    started: str  # what `inv server.start` printed
    url: str
    ca: Path


@pytest.fixture(scope="module")
def https_server():
    state, config_dir = make_state_dir(), make_state_dir()
    # the config file lives apart: a 0644 file in the state dir would fail the file-modes probe
    env = hermetic_env(config_dir, server__tls__enabled="true", server__workers="1")
    env["MLFLOW_OPS_STATE_DIR"] = str(state)
    try:
        started = inv("server.start", env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        settings = load_settings(environ=env, local_file=False).settings
        printed = re.search(r"TLS: clients trust (\S+) ", started.stdout)
        assert printed, started.stdout
        yield HttpsServer(settings, env, started.stdout, settings.server.url, Path(printed.group(1)))
    finally:
        stopped = inv("server.stop", env=env)
        assert stopped.returncode == 0, stopped.stderr
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(config_dir, ignore_errors=True)


def test_start_serves_https_with_a_private_ca_and_status_says_where_it_is(https_server):
    server = https_server
    assert server.url.startswith("https://127.0.0.1:")
    assert f"server ready at {server.url}" in server.started
    assert server.ca == server.settings.state_path / "secrets" / "tls" / "ca.crt"
    status = inv("server.status", env=server.env)
    assert status.returncode == 0, status.stderr
    assert server.url in status.stdout and str(server.ca) in status.stdout
    assert re.search(r"healthy\s+True", status.stdout), status.stdout


def test_the_deployment_checks_pass_over_https_with_the_printed_ca(https_server, tmp_path):
    server = https_server
    done = inv(
        "test.deployment", "--url", server.url, "--ca", str(server.ca), "--report-dir", str(tmp_path), env=server.env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"verifying its certificate with {server.ca}" in done.stdout
    ui = "PASS" if Path(CHROMIUM).is_file() and shutil.which("certutil") else "SKIPPED"
    assert re.search(rf"10\. web UI: {ui}", done.stdout) and "8. tracing: PASS" in done.stdout, done.stdout
    assert (tmp_path / "report.json").is_file()


def test_a_client_without_the_ca_is_refused(https_server, tmp_path, monkeypatch):
    server = https_server
    monkeypatch.delenv(tls.CERT_PATH_ENV, raising=False)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{server.url}/health", timeout=10)
    assert requests.get(f"{server.url}/health", timeout=10, verify=str(server.ca)).status_code == 200
    # MLflow's own client, through the deployment checks, without the CA
    first = [c for c in all_checks() if c.name == "experiment"]
    report = run_checks(server.url, report_dir=tmp_path, browser=None, checks=first)
    (result,) = report.checks
    assert result.status == FAIL and "certificate of" in result.reason and "not accepted" in result.reason
    # plain HTTP on the HTTPS port gets no HTTP answer
    conn = http.client.HTTPConnection("127.0.0.1", server.settings.server.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/health")
        conn.getresponse()
    conn.close()


def test_the_browser_refuses_a_certificate_its_ca_did_not_sign(https_server, tmp_path):
    if not (Path(CHROMIUM).is_file() and shutil.which("certutil")):
        pytest.skip("needs Chromium and certutil (inv deps)")
    other, _ = certificates.make_ca("another CA")
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(certificates.cert_pem(other))
    with pytest.raises(CheckFailed, match="ERR_CERT_AUTHORITY_INVALID"):
        page = Page("/", "no-such-run", "run no-such-run", tmp_path / "shot.png")
        open_and_find(https_server.url, [page], CHROMIUM, ca_file=str(other_ca))


def test_the_security_probes_pass_over_https_with_the_tools_ca(https_server, tmp_path):
    server = https_server
    done = inv("test.security", "--ca", str(server.ca), "--report-dir", str(tmp_path), env=server.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\d+\. plain HTTP: PASS", done.stdout) and re.search(r"\d+\. certificate: PASS", done.stdout)
    report = (tmp_path / "report.json").read_text()
    assert f"verified with {server.ca}" in report and "speak only TLS" in report


def _probe(url: str, ca: Path, name: str):
    target = Target(url=url, ca_file=str(ca), timeout=5)
    (result,) = run_security(target, probes=[p for p in all_probes() if p.name == name]).checks
    return result


def test_an_expired_a_wrong_host_or_a_foreign_certificate_fails_the_certificate_probe(tmp_path):
    ca, ca_key = certificates.make_ca("test CA")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(certificates.cert_pem(ca))
    past = certificates.utc_now() - dt.timedelta(days=30)
    other, other_key = certificates.make_ca("another CA")
    cases = {
        "good": (certificates.issue(ca, ca_key, ["localhost", "127.0.0.1"]), PASS, "verified with"),
        "expired": (certificates.issue(ca, ca_key, ["127.0.0.1"], days=10, not_before=past), FAIL, "expired on"),
        "wrong host": (
            certificates.issue(ca, ca_key, ["mlflow.example.com"]),
            FAIL,
            "made for mlflow.example.com, not 127.0.0.1",
        ),
        "foreign CA": (certificates.issue(other, other_key, ["127.0.0.1"]), FAIL, "not accepted by a client trusting"),
    }
    for case, ((cert, key), status, reason) in cases.items():
        with serving(cert, key) as port:
            result = _probe(f"https://127.0.0.1:{port}", ca_file, "certificate")
        assert (result.status, reason in result.reason) == (status, True), (case, result.reason)


def test_keys_are_private_and_never_in_a_log_a_report_or_argv(https_server):
    server = https_server
    folder = server.ca.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    keys = [folder / "ca.key", folder / "server.key"]
    assert [stat.S_IMODE(k.stat().st_mode) for k in keys] == [0o600, 0o600]
    # the base64 lines of each key: none may appear anywhere we write or show
    secret_lines = {line for k in keys for line in k.read_text().splitlines() if not line.startswith("-----")}
    assert secret_lines
    texts = [server.started, *(p.read_text(errors="replace") for p in server.settings.state_path.rglob("*.log"))]
    texts += [p.read_text(errors="replace") for p in server.settings.state_path.rglob("report.*")]
    for proc in psutil.process_iter(["cmdline"]):
        texts.append(" ".join(proc.info["cmdline"] or []))
    leaks = [line for line in secret_lines for text in texts if line in text]
    assert leaks == []
    # the key's path may stand in argv (uvicorn's --ssl-keyfile), and does
    assert any(str(folder / "server.key") in text for text in texts)
