"""Each security probe PASSes on a default deployment and FAILs on one weakened on purpose.

Servers are shared: the session's SQLite and PostgreSQL servers (weakened in place, then
restored), one open server (0.0.0.0, any Host, CORS *) and one basic-auth server per module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.libs.core.errors import UserError
from tasks.libs.pipeline.full_check import _security
from tasks.libs.postgres.local import LocalPostgres
from tasks.libs.reporting.records import FAIL, PASS, SKIPPED, CheckResult
from tasks.libs.security.http import raw_request
from tasks.libs.security.suite import all_probes, run_security
from tasks.libs.security.target import Target, basic, target_from_settings
from tests.support.settings import LiveServer, live_server, make_settings, make_state_dir

AUTH_ONLY = {"default password", "permissions", "workspace isolation"}
TLS_ONLY = {"plain HTTP", "certificate"}  # SKIPPED on a plain-HTTP deployment (tests/integration/test_tls.py)


def probe(target: Target, *names: str) -> dict[str, CheckResult]:
    """The named probes (all when none) against target, by name."""
    chosen = [p for p in all_probes() if not names or p.name in names]
    assert len(chosen) == (len(names) or len(all_probes())), names
    return {c.name: c for c in run_security(target, probes=chosen).checks}


def statuses(results: dict[str, CheckResult]) -> dict[str, str]:
    return {name: c.status for name, c in results.items()}


@contextlib.contextmanager
def chmod(path: Path, mode: int) -> Iterator[None]:
    before = path.stat().st_mode & 0o7777
    path.chmod(mode)
    try:
        yield
    finally:
        path.chmod(before)


@pytest.fixture(scope="module")
def open_server() -> Iterator[LiveServer]:
    """Reachable beyond loopback, any Host, any Origin, no sign-in: every guard down."""
    path = make_state_dir()
    settings = make_settings(
        path,
        **{
            "server.host": "0.0.0.0",
            "server.workers": 1,
            "server.allowed_hosts": ["*"],
            "server.env": {"MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": "*"},
        },
    )
    with live_server(settings) as server:
        yield server
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_server() -> Iterator[LiveServer]:
    """Basic auth with admin `root`, so that an account named `admin` can be planted beside it."""
    path = make_state_dir()
    settings = make_settings(
        path, **{"server.auth.enabled": True, "server.auth.admin_user": "root", "server.workers": 1}
    )
    with live_server(settings) as server:
        yield server
    shutil.rmtree(path, ignore_errors=True)


# --- the default deployments --------------------------------------------------------------


def test_default_sqlite_deployment_passes_every_probe(sqlite_server):
    target = target_from_settings(sqlite_server.settings)
    assert target.owned and target.can_write
    results = probe(target)
    skipped = AUTH_ONLY | TLS_ONLY | {"pg_hba", "secrets"}  # no sign-in, TLS, PostgreSQL or secret configured
    assert {n for n, s in statuses(results).items() if s != PASS} == skipped, results
    assert "19 traversal reads refused (19x HTTP 400)" in results["artifact traversal (read)"].reason
    assert "nothing changed outside the artifact root on disk" in results["artifact traversal (write)"].reason
    assert not list(sqlite_server.settings.state_path.glob("security-probe-*")), "canaries left behind"
    assert not list(sqlite_server.artifacts_dir.glob("mlflow-ops-sec-*")), "probe uploads left behind"


def test_default_postgres_deployment_passes_every_probe(postgres_server, pg_settings):
    # The session's cluster lives in pg_settings' state dir; a deployment finds it there.
    settings = postgres_server.settings.model_copy(deep=True)
    settings.postgres.local.cluster_dir = str(LocalPostgres(pg_settings).root)
    results = probe(target_from_settings(settings))
    assert {n for n, s in statuses(results).items() if s != PASS} == AUTH_ONLY | TLS_ONLY, results
    assert "none trusts TCP clients (read from pg_hba_file_rules)" in results["pg_hba"].reason
    assert "PostgreSQL on 127.0.0.1:" in results["listen addresses"].reason
    assert "absent from" in results["secrets"].reason


def test_a_server_that_is_not_ours_is_probed_read_only(sqlite_server, state_dir):
    elsewhere = make_settings(state_dir)  # another deployment's settings: sqlite_server is not its server
    target = target_from_settings(elsewhere, url=sqlite_server.url)
    assert not target.owned and target.local is None
    results = probe(target)
    for name in ("artifact traversal (write)", "model version source"):
        assert results[name].status == SKIPPED and "--allow-writes" in results[name].reason
    for name in ("symlink escape", "listen addresses", "pg_hba", "file modes", "secrets"):
        assert results[name].status == SKIPPED, name
    assert results["artifact traversal (read)"].status == PASS
    writing = probe(
        dataclasses.replace(target, allow_writes=True), "artifact traversal (write)", "model version source"
    )
    assert statuses(writing) == {"artifact traversal (write)": PASS, "model version source": PASS}
    assert "answers only" in writing["artifact traversal (write)"].reason
    assert not list(sqlite_server.artifacts_dir.glob("mlflow-ops-sec-*")), "probe uploads left behind"


# --- weakened in place, then restored -------------------------------------------------------


def test_symlink_escaping_the_artifact_root_fails_and_delete_follows_it(sqlite_server):
    target = target_from_settings(sqlite_server.settings)
    outside = sqlite_server.settings.state_path / "outside-the-root"
    outside.mkdir()
    link = sqlite_server.artifacts_dir / "escape"
    link.symlink_to(outside)
    try:
        result = probe(target, "symlink escape")["symlink escape"]
        assert result.status == FAIL
        assert f"escape -> {outside}" in result.reason and "GET through escape answered HTTP 400" in result.reason
        # The gap docs/security.md records: MLflow 3.17.2 deletes through the link. If this starts
        # failing, MLflow closed it: update docs/security.md and the probe's reason.
        victim = outside / "delete-me.txt"
        victim.write_text("canary\n")
        answer = raw_request(sqlite_server.url, "DELETE", "/api/2.0/mlflow-artifacts/artifacts/escape/delete-me.txt")
        assert answer.status == 200 and not victim.exists()
    finally:
        link.unlink()
        shutil.rmtree(outside)
    assert probe(target, "symlink escape")["symlink escape"].status == PASS


def test_files_readable_by_others_fail_file_modes(sqlite_server):
    settings = sqlite_server.settings
    target = target_from_settings(settings)
    logs = settings.state_path / "server"
    with (
        chmod(settings.state_path, 0o755),
        chmod(settings.sqlite_file, 0o644),
        chmod(logs, 0o755),
        chmod(logs / "server.log", 0o644),
    ):
        result = probe(target, "file modes")["file modes"]
    assert result.status == FAIL
    assert f"{settings.state_path} can be listed by others (0o755)" in result.reason
    assert "4 path(s) open to other users" in result.reason
    assert probe(target, "file modes")["file modes"].status == PASS


def test_a_secret_in_a_log_a_report_or_argv_fails_secrets(sqlite_server):
    secret = "s3cr3t-" + os.urandom(6).hex()
    target = dataclasses.replace(target_from_settings(sqlite_server.settings), secrets=(secret,))
    log = sqlite_server.settings.state_path / "server" / "server.log"
    original = log.read_bytes()
    with open(log, "a") as fh:
        fh.write(f"connecting to postgresql://u:{secret}@db/x\n")
    try:
        result = probe(target, "secrets")["secrets"]
    finally:
        log.write_bytes(original + log.read_bytes()[len(original) :].replace(secret.encode(), b"***"))
    assert result.status == FAIL and f"{log} line" in result.reason and secret not in result.reason
    reports = sqlite_server.settings.state_path / "reports" / "leaky"
    reports.mkdir(parents=True)
    (reports / "report.md").write_text(f"password: {secret}\n")
    try:
        result = probe(target, "secrets")["secrets"]
        assert result.status == FAIL and "leaky/report.md line 1" in result.reason
    finally:
        shutil.rmtree(reports)
    # `sleep <secret>` would exit at once; this keeps the secret in its argv.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", secret], start_new_session=True)
    try:
        assert target.local is not None
        in_group = dataclasses.replace(target, local=dataclasses.replace(target.local, server_pgid=sleeper.pid))
        result = probe(in_group, "secrets")["secrets"]
        assert result.status == FAIL and f"the command line of pid {sleeper.pid}" in result.reason
    finally:
        sleeper.kill()
        sleeper.wait()
    assert probe(target, "secrets")["secrets"].status == PASS


def test_allowed_hosts_other_than_configs_fail_host_header(sqlite_server):
    target = target_from_settings(sqlite_server.settings)
    assert target.local is not None
    wrong = dataclasses.replace(target, local=dataclasses.replace(target.local, allowed_hosts=["mlflow.internal"]))
    result = probe(wrong, "host header")["host header"]
    assert result.status == FAIL and "mlflow.internal" in result.reason


def test_full_check_security_stage_fails_on_a_failing_probe(sqlite_server, tmp_path):
    settings = sqlite_server.settings
    assert "probes passed" in _security(settings, tmp_path, "sqlite")
    with chmod(settings.sqlite_file, 0o644), pytest.raises(UserError, match="file modes"):
        _security(settings, tmp_path, "sqlite")
    assert (tmp_path / "sqlite" / "security" / "junit.xml").is_file()


# --- every guard down ------------------------------------------------------------------------


def test_open_server_fails_host_cors_auth_and_listen_probes(open_server):
    target = target_from_settings(open_server.settings)
    results = probe(target, "host header", "cors", "auth required", "listen addresses")
    assert (
        results["host header"].status == FAIL
        and "Host: evil.example answered HTTP 200" in results["host header"].reason
    )
    assert results["cors"].status == FAIL and "Access-Control-Allow-Origin: *" in results["cors"].reason
    assert results["auth required"].status == FAIL and "beyond loopback" in results["auth required"].reason
    assert results["listen addresses"].status == PASS  # config says 0.0.0.0, and so it listens
    assert target.local is not None
    narrower = dataclasses.replace(target, local=dataclasses.replace(target.local, bind_host="127.0.0.1"))
    listen = probe(narrower, "listen addresses")["listen addresses"]
    assert (
        listen.status == FAIL and "listens on 0.0.0.0:" in listen.reason and "config binds 127.0.0.1" in listen.reason
    )
    # The open doors do not open the artifact endpoints.
    artifacts = ("artifact traversal (read)", "artifact traversal (write)", "model version source")
    assert set(statuses(probe(target, *artifacts)).values()) == {PASS}


def test_experiment_with_artifacts_outside_the_root_fails_artifact_locations(open_server):
    target = target_from_settings(open_server.settings)
    assert probe(target, "artifact locations")["artifact locations"].status == PASS
    outside = open_server.settings.state_path / "elsewhere"
    body = {"name": "outside-the-root", "artifact_location": outside.as_uri()}
    assert raw_request(open_server.url, "POST", "/api/2.0/mlflow/experiments/create", body=body).status == 200
    result = probe(target, "artifact locations")["artifact locations"]
    assert result.status == FAIL and f"'outside-the-root' -> {outside.as_uri()}" in result.reason


# --- artifacts in a bucket ---------------------------------------------------------------------


def test_a_server_that_serves_no_artifacts_is_not_failed_for_it(state_dir):
    # Direct S3 mode: --no-serve-artifacts, so the proxied routes answer 503; the bucket is never
    # reached by these probes, so none needs to run.
    settings = make_settings(state_dir, **{"artifacts.store": "s3", "artifacts.mode": "direct", "server.workers": 1})
    with live_server(settings):
        results = probe(target_from_settings(settings))
    read = results["artifact traversal (read)"]
    assert read.status == PASS and "HTTP 503 (artifact serving off)" in read.reason
    assert (
        results["artifact traversal (write)"].status == SKIPPED
        and "HTTP 503" in results["artifact traversal (write)"].reason
    )
    assert results["symlink escape"].status == SKIPPED
    assert {n for n, s in statuses(results).items() if s == FAIL} == set(), results


# --- basic auth -----------------------------------------------------------------------------


def test_auth_server_passes_and_a_planted_default_password_fails(auth_server):
    target = target_from_settings(auth_server.settings)
    assert target.credentials and target.credentials[0] == "root"
    results = probe(target)
    assert {n for n, s in statuses(results).items() if s != PASS} == {"pg_hba", "workspace isolation"} | TLS_ONLY, (
        results
    )
    assert "runs without workspaces" in results["workspace isolation"].reason
    assert "default user/password pairs refused" in results["default password"].reason
    admin = {"Authorization": basic(*target.credentials)}
    users = "/api/2.0/mlflow/users"
    body = {"username": "admin", "password": "password1234"}
    assert raw_request(auth_server.url, "POST", f"{users}/create", body=body, headers=admin).status == 200
    try:
        result = probe(target, "default password")["default password"]
        assert result.status == FAIL and "admin:password1234 (an MLflow default) signs in" in result.reason
        # An auth database from before MLflow 2.22 whose admin kept `password` (too short to create today).
        from werkzeug.security import generate_password_hash

        with contextlib.closing(sqlite3.connect(auth_server.settings.state_path / "auth" / "basic_auth.db")) as db:
            db.execute(
                "UPDATE users SET password_hash = ?, is_admin = 1 WHERE username = 'admin'",
                (generate_password_hash("password"),),
            )
            db.commit()
        result = probe(target, "default password")["default password"]
        assert result.status == FAIL and "admin:password (an MLflow default) signs in" in result.reason
    finally:
        raw_request(auth_server.url, "DELETE", f"{users}/delete", body={"username": "admin"}, headers=admin)
    assert probe(target, "default password")["default password"].status == PASS


def test_auth_server_without_credentials_skips_what_needs_them(auth_server):
    anonymous = dataclasses.replace(target_from_settings(auth_server.settings), credentials=None)
    results = probe(anonymous, "version", "artifact traversal (read)", "auth required", "permissions")
    assert results["version"].status == SKIPPED and "HTTP 401" in results["version"].reason
    assert results["artifact traversal (read)"].status == SKIPPED
    assert results["auth required"].status == PASS
    assert results["permissions"].status == SKIPPED and "admin credentials" in results["permissions"].reason


def test_workspaces_keep_their_users_apart_unless_default_is_opened_to_all(state_dir):
    """Sign-in and workspaces: a user of one workspace reaches neither another nor 'default' (PASS);
    with MLflow's grant_default_workspace_access every user reads 'default' (FAIL, naming it)."""
    settings = make_settings(state_dir, **{"server.auth.enabled": True, "server.workspaces": True, "server.workers": 1})
    with live_server(settings):
        passed = probe(target_from_settings(settings), "workspace isolation")["workspace isolation"]
    assert passed.status == PASS, passed.reason
    assert "cannot list, read or create experiments or runs in another workspace nor in 'default'" in passed.reason
    settings.server.auth.grant_default_workspace_access = True
    with live_server(settings) as server:
        target = target_from_settings(settings)
        failed = probe(target, "workspace isolation")["workspace isolation"]
        admin = {"Authorization": basic(*target.credentials)} if target.credentials else {}
        left = raw_request(server.url, "GET", "/api/3.0/mlflow/workspaces", headers=admin).json()
    assert failed.status == FAIL
    assert "reached others: " in failed.reason and "workspace 'default''s experiment" in failed.reason, failed.reason
    assert "another workspace" not in failed.reason and "-b's experiment" not in failed.reason  # only 'default' opened
    assert [w["name"] for w in left.get("workspaces", [])] == ["default"]  # the probe's workspaces are gone


# --- PostgreSQL ---------------------------------------------------------------------------------


def test_trust_line_in_pg_hba_fails(pg_settings):
    target = target_from_settings(pg_settings)
    hba = LocalPostgres(pg_settings).data_dir / "pg_hba.conf"
    original = hba.read_text()
    assert probe(target, "pg_hba")["pg_hba"].status == PASS
    trust = "host    all             all             0.0.0.0/0               trust\n"
    try:
        with open(hba, "w") as fh:  # in place: owner and mode stay the cluster's; never reloaded
            fh.write(trust + original)
        result = probe(target, "pg_hba")["pg_hba"]
    finally:
        with open(hba, "w") as fh:
            fh.write(original)
    assert result.status == FAIL and "line 1 (host 0.0.0.0" in result.reason
    assert probe(target, "pg_hba")["pg_hba"].status == PASS


# --- the request itself ------------------------------------------------------------------------


def test_raw_request_sends_the_path_verbatim_with_one_host_header():
    seen: list[tuple[str, list[str]]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get_all("Host") or []))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        for path in ("/a/../../etc/passwd", "/x/%252e%252e/y", "/x//tmp/y"):
            assert raw_request(url, "GET", path, timeout=5).status == 204
        raw_request(url, "GET", "/h", headers={"Host": "evil.example"}, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert [p for p, _ in seen] == ["/a/../../etc/passwd", "/x/%252e%252e/y", "/x//tmp/y", "/h"]
    assert [h for _, h in seen] == [[f"127.0.0.1:{server.server_port}"]] * 3 + [["evil.example"]]
