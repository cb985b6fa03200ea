"""Security defaults: loopback only, private state files, opt-in basic auth, no secret leaks."""

import json
import stat
import urllib.error
import urllib.request

import psutil
import pytest

from tasks.libs.server.auth import admin_credentials
from tasks.libs.server.control import (
    ServerPaths,
    start_server,
    stop_server,
)
from tests.support.settings import make_settings


def mode(path):
    return oct(stat.S_IMODE(path.stat().st_mode))


def search(url, auth=None):
    headers = {"Content-Type": "application/json"}
    if auth:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search", data=json.dumps({"max_results": 1}).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.integration
def test_state_files_are_private(sqlite_server):
    settings = sqlite_server.settings
    paths = ServerPaths.of(settings)
    assert mode(paths.pid_file) == "0o600" and mode(paths.log_file) == "0o600"
    assert mode(settings.sqlite_file) == "0o600"
    assert mode(paths.pid_file.parent) == "0o700" and mode(settings.artifacts_dir) == "0o700"


@pytest.mark.integration
def test_basic_auth_mode(state_dir):
    settings = make_settings(state_dir, **{"server.auth.enabled": True})
    start_server(settings)
    try:
        user, password = admin_credentials(settings)
        assert password != "password1234" and len(password) >= 24
        url = settings.server.url
        assert search(url) == 401
        assert search(url, (user, "password1234")) == 401
        assert search(url, (user, password)) == 200
        secrets_dir = state_dir / "secrets"
        assert mode(secrets_dir) == "0o700"
        assert {mode(p) for p in secrets_dir.iterdir()} == {"0o600"}
        leader = psutil.Process(json.loads(ServerPaths.of(settings).pid_file.read_text())["pid"])
        for proc in [leader, *leader.children(recursive=True)]:
            assert password not in " ".join(proc.cmdline())
    finally:
        stop_server(settings)
    assert password not in ServerPaths.of(settings).log_file.read_text()
