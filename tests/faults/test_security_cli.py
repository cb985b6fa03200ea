"""`inv test.security` as a user runs it: an open deployment or no server at all ends in exit 1,
every report written, the failing probe named, no traceback and no secret."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.support.checks import dead_url
from tests.support.cli import hermetic_env, inv

pytestmark = pytest.mark.integration


def cli_env(server, config_dir):
    # The config file goes to a folder of its own: a stray file in the server's state dir is
    # itself something the file-modes probe reports.
    env = hermetic_env(config_dir)
    env["MLFLOW_OPS_STATE_DIR"] = str(server.settings.state_path)
    env["MLFLOW_OPS_SERVER__PORT"] = str(server.settings.server.port)
    return env


def test_cli_security_on_a_weakened_deployment_exits_1_naming_the_probe(sqlite_server, state_dir):
    store = sqlite_server.settings.sqlite_file
    out = state_dir / "report"
    store.chmod(0o644)
    try:
        proc = inv("test.security", "--report-dir", str(out), env=cli_env(sqlite_server, state_dir))
    finally:
        store.chmod(0o600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "1 probe(s) failed: file modes"
    assert f"{store} is readable by others (0o644)" in proc.stdout and "Traceback" not in proc.stderr
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("tests") == "18"
    data = json.loads((out / "report.json").read_text())
    assert data["facts"]["Started by this tool"].startswith("yes (pid ")
    assert "**FAILED: 10 passed, 1 failed, 7 skipped" in (out / "report.md").read_text()


def test_cli_security_against_no_server_exits_1_in_one_line(state_dir):
    url = dead_url()
    proc = inv("test.security", "--url", url, "--report-dir", str(state_dir / "r"), env=hermetic_env(state_dir))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "1 probe(s) failed: version"
    assert f"no server answers at {url} (connection refused)" in proc.stdout
    assert "note: not the configured server" in proc.stdout
