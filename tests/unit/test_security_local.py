"""The security probes' local judgements and their report, without a server or a database."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tasks.libs.core.errors import UserError
from tasks.libs.reporting.records import FAIL, SKIPPED
from tasks.libs.reporting.writers import format_table, write_reports
from tasks.libs.security.probes_artifacts import escaping_symlinks
from tasks.libs.security.probes_exposure import as_config_says, exposed_to_others, parse_hba, secret_forms
from tasks.libs.security.suite import run_security
from tasks.libs.security.target import Target, same_server, target_from_settings
from tests.support.checks import dead_url
from tests.support.settings import make_settings, make_state_dir


@pytest.fixture
def shared_dir():
    # Under /tmp (o+x all the way down), unlike pytest's tmp_path (0700): modes matter here.
    path = make_state_dir()
    yield path
    shutil.rmtree(path)


def test_a_path_is_exposed_only_when_others_can_reach_and_read_it(shared_dir):
    secret = shared_dir / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    assert exposed_to_others(secret) is None
    secret.chmod(0o644)
    assert exposed_to_others(secret) == f"{secret} is readable by others (0o644)"
    secret.chmod(0o646)
    assert "world-writable" in (exposed_to_others(secret) or "")
    assert exposed_to_others(shared_dir) is None  # 0711: others may traverse it, not list it
    shared_dir.chmod(0o755)
    assert exposed_to_others(shared_dir) == f"{shared_dir} can be listed by others (0o755)"
    closed = shared_dir / "closed"
    closed.mkdir(mode=0o700)
    inner = closed / "log"
    inner.write_text("x")
    inner.chmod(0o644)
    assert exposed_to_others(inner) is None  # behind a folder others cannot enter


def test_symlinks_leading_outside_the_root_are_found(shared_dir):
    root, outside = shared_dir / "artifacts", shared_dir / "outside"
    (root / "1" / "run").mkdir(parents=True)
    outside.mkdir()
    (root / "1" / "inside").symlink_to(root / "1" / "run")
    (root / "1" / "run" / "out").symlink_to(outside)
    (root / "dangling").symlink_to("/nonexistent/far/away")
    found = {str(link.relative_to(root)): dest for link, dest in escaping_symlinks(root)}
    assert found == {"1/run/out": outside.resolve(), "dangling": Path("/nonexistent/far/away")}


def test_pg_hba_lines_in_both_address_forms():
    rules = parse_hba(
        "# comment\n"
        "local   all  all                          scram-sha-256\n"
        "host    all  all  127.0.0.1/32            scram-sha-256\n"
        "host    all  all  10.0.0.0  255.0.0.0     trust\n"
        "hostssl all  all  ::1/128                 trust   # trailing comment\n"
        "include_dir conf.d\n"
    )
    assert [(r["line_number"], r["type"], r["auth_method"]) for r in rules] == [
        (2, "local", "scram-sha-256"),
        (3, "host", "scram-sha-256"),
        (4, "host", "trust"),
        (5, "hostssl", "trust"),
        (6, "include_dir", None),
    ]


def test_the_configured_server_is_recognised_by_any_loopback_name():
    assert same_server("http://localhost:3111", "http://127.0.0.1:3111")
    assert same_server("http://[::1]:3111/", "http://127.0.0.1:3111")
    assert not same_server("http://127.0.0.1:3112", "http://127.0.0.1:3111")
    assert not same_server("http://10.0.0.5:3111", "http://127.0.0.1:3111")


def test_a_url_with_credentials_or_no_http_is_refused_in_one_line(state_dir):
    settings = make_settings(state_dir)
    with pytest.raises(UserError, match="carries credentials; drop them and set MLFLOW_TRACKING_USERNAME"):
        target_from_settings(settings, url="http://admin:hunter2@127.0.0.1:5000")
    with pytest.raises(UserError, match="is not an http"):
        target_from_settings(settings, url="ftp://127.0.0.1:5000")


def test_listening_addresses_against_the_configured_host():
    assert as_config_says("127.0.0.1", "127.0.0.1") and as_config_says("::1", "localhost")
    assert not as_config_says("0.0.0.0", "127.0.0.1")
    assert as_config_says("10.1.2.3", "0.0.0.0") and as_config_says("::", "::")


def test_secrets_are_looked_for_as_written_and_url_quoted():
    forms = secret_forms(["p@ss:w#rd%/?&=", "short", ""])
    assert forms == [b"p%40ss%3Aw%23rd%25%2F%3F%26%3D", b"p@ss:w#rd%/?&="]


def test_no_server_fails_the_version_probe_and_skips_the_other_requests(tmp_path):
    url = dead_url()
    report = run_security(Target(url=url, secrets=("hunter2-secret",)), report_dir=tmp_path)
    checks = {c.name: c for c in report.checks}
    assert checks["version"].status == FAIL
    assert checks["version"].reason == f"no server answers at {url} (connection refused)"
    assert checks["cors"].status == SKIPPED and checks["cors"].reason.startswith("needs a server that answers")
    assert checks["file modes"].status == SKIPPED
    assert report.facts["Requests sent"] == "1"
    paths = write_reports(report, tmp_path)
    table = format_table(report)
    assert "latency" not in table and "FAILED: 0 passed, 1 failed, 17 skipped" in table
    suite = ET.parse(paths["junit"]).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == "mlflow-ops security checks"
    assert suite.get("tests") == "18" and suite.get("failures") == "1" and suite.get("skipped") == "17"
    assert {case.get("classname") for case in suite.iter("testcase")} == {"security"}
    data = json.loads(paths["json"].read_text())
    assert data["suite"] == "security" and data["facts"]["Started by this tool"] == "no"
    assert "screenshot" not in data and data["checks"][0]["details"]["requests"] == 1
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# MLflow security probes\n\n- Server: `http://127.0.0.1:")
    assert "latency" not in markdown
