"""Bad input through the CLI: one clear line, a non-zero exit, no traceback, nothing
started. Plus the password with URI characters end to end, running as root, and no Docker engine.

Every command runs as `python -m invoke ...` from the repository root with a hermetic
environment: a temporary state dir, a config file and free ports of its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tasks.libs.core.processes import free_port, group_members
from tasks.libs.core.settings import load_settings
from tasks.libs.postgres.local import LocalPostgres
from tasks.libs.server.control import ServerPaths, ServerRecord
from tests.support.cli import hermetic_env, inv, pid_files, processes_in
from tests.support.settings import make_state_dir

pytestmark = pytest.mark.faults

PASSWORD = "p@ss#%/?:"  # every character that breaks naive URI building
WRONG = "wr@ng#%/?:"


def assert_refused(proc: subprocess.CompletedProcess, state_dir, *expected: str, secrets: tuple[str, ...] = ()):
    """Exit non-zero, exactly one line on stderr naming the problem, no traceback, nothing started."""
    assert proc.returncode not in (0, None), proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    for text in expected:
        assert text in lines[0]
    for secret in secrets:
        assert secret not in proc.stderr + proc.stdout and quote(secret, safe="") not in proc.stderr + proc.stdout
    assert pid_files(state_dir) == []
    assert processes_in(state_dir) == []


def _config(state_dir, text: str) -> dict[str, str]:
    env = hermetic_env(state_dir)
    bad = state_dir / "bad.yaml"
    bad.write_text(text)
    env["MLFLOW_OPS_CONFIG"] = str(bad)
    return env


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("server: {port: [3111\n", ["bad.yaml", "not valid YAML"], id="malformed-yaml"),
        pytest.param(
            "backend: mysql\n", ["backend = 'mysql' is not one of 'sqlite' or 'postgres'"], id="unknown-backend"
        ),
        pytest.param(
            "sqlite: {path: 'sqlite:///:memory:'}\n",
            ["sqlite.path", "in-memory database loses every run"],
            id="sqlite-memory",
        ),
        pytest.param("sqlite: {path: ':memory:'}\n", ["sqlite.path", "in-memory"], id="bare-memory"),
        pytest.param(
            "sqlite: {path: data/mlflow.db}\n",
            ["sqlite.path", "is relative; give an absolute path"],
            id="relative-sqlite-path",
        ),
        pytest.param(
            "server: {port: 70000}\n", ["server.port = 70000", "less than or equal to 65535"], id="port-too-high"
        ),
        pytest.param("server: {port: 0}\n", ["server.port = 0"], id="port-zero"),
        pytest.param(
            "server: {prot: 3111}\n", ["unknown setting 'server.prot' (did you mean 'server.port'?)"], id="misspelt-key"
        ),
    ],
)
def test_bad_config_file_refuses_server_start(state_dir, text, expected):
    assert_refused(inv("server.start", env=_config(state_dir, text)), state_dir, *expected)


def test_config_check_exits_non_zero_with_one_line(state_dir):
    proc = inv("config.check", env=_config(state_dir, "server: {port: -1}\n"))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "bad.yaml: server.port = -1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_object_tag_is_refused_and_never_constructed(state_dir):
    marker = state_dir / f"pwned-{uuid.uuid4().hex}"
    env = _config(state_dir, f"!!python/object/apply:os.system ['touch {marker}']\n")
    assert_refused(inv("server.start", env=env), state_dir, "only plain YAML is loaded")
    assert not marker.exists()


def test_empty_config_file_is_refused(state_dir):
    assert_refused(inv("config.check", env=_config(state_dir, "")), state_dir, "empty")


@pytest.mark.parametrize(
    "args, values, expected",
    [
        pytest.param(
            ["server.start", "--port", "70000"], {}, ["flag --port: server.port = '70000'", "65535"], id="flag-port"
        ),
        pytest.param(["server.start", "--port", "-5"], {}, ["server.port = '-5'"], id="flag-port-negative"),
        pytest.param(["server.start"], {"SERVER__PORT": "99999"}, ["env MLFLOW_OPS_SERVER__PORT"], id="env-port"),
        pytest.param(["server.start", "--backend", "mysql"], {}, ["flag --backend", "'mysql'"], id="flag-backend"),
        pytest.param(["db.start", "--provider", "podman"], {}, ["postgres.provider = 'podman'"], id="flag-provider"),
    ],
)
def test_bad_flag_or_env_is_refused(state_dir, args, values, expected):
    assert_refused(inv(*args, env=hermetic_env(state_dir, **values)), state_dir, *expected)


def test_docker_engine_absent_suggests_the_local_provider(state_dir):
    if _engine_answers():
        pytest.skip("a Docker engine answers on this machine")
    proc = inv("db.start", "--provider", "docker", env=hermetic_env(state_dir))
    assert_refused(proc, state_dir, "no Docker engine answers", "use the local provider", "--provider local")


# --- unusable stores and URIs ----------------------------------------------------------------


def test_sqlite_file_in_a_missing_unmakeable_folder_is_one_line(state_dir):
    env = _config(state_dir, "sqlite: {path: /proc/no-such-dir/mlflow.db}\n")
    assert_refused(inv("server.start", env=env), state_dir, "/proc/no-such-dir")


def test_corrupt_sqlite_file_is_one_line(state_dir):
    corrupt = state_dir / "corrupt.db"
    corrupt.write_text("this is not a database\n" * 100)
    env = _config(state_dir, f"sqlite: {{path: {corrupt}}}\n")
    assert_refused(inv("server.start", env=env), state_dir, str(corrupt))


def test_external_uri_with_a_wrong_scheme_never_shows_its_password(state_dir):
    secret = "Ext3rnal-S3cret"
    env = _config(
        state_dir,
        f"backend: postgres\npostgres: {{provider: external, uri: 'mysql://u:{secret}@127.0.0.1:{free_port()}/db'}}\n",
    )
    assert_refused(inv("server.start", env=env), state_dir, "postgres", secrets=(secret,))
    assert_refused(inv("db.start", env=env), state_dir, "postgres", secrets=(secret,))


# --- running as root -------------------------------------------------------------------


def _checkout_in_a_closed_folder() -> tuple[Path, Path, dict[str, str]]:
    """(the 0700 folder, a state dir inside it, the CLI's env) for a local PostgreSQL run as root, as
    a checkout under /root has it; skips the test when we are not root."""
    if not _root():
        pytest.skip("only meaningful as root")
    closed = make_state_dir()
    closed.chmod(0o700)
    state = closed / "checkout" / ".state"
    state.mkdir(parents=True)
    return closed, state, hermetic_env(state, POSTGRES__PROVIDER="local")


def test_root_with_the_state_dir_under_a_closed_folder_keeps_the_cluster_where_postgres_can_reach_it():
    """A checkout under /root (0700): db and server still start; the cluster lives in the postgres
    user's home, db.status says where, and stop and reset --wipe find it there."""
    closed, state, env = _checkout_in_a_closed_folder()
    try:
        started = inv("db.start", env=env)
        assert started.returncode == 0, started.stderr
        status = inv("db.status", env=env)
        assert status.returncode == 0, status.stderr
        data_dir = next(line.split()[1] for line in status.stdout.splitlines() if line.startswith("data_dir"))
        home = pwd.getpwnam("postgres").pw_dir
        assert data_dir.startswith(f"{home}/mlflow-ops/") and (state / "postgres" / "cluster").is_file()
        server = inv("server.start", "--backend", "postgres", env=env)
        assert server.returncode == 0, server.stderr
        assert inv("server.stop", env=env).returncode == 0
        assert "PostgreSQL stopped" in inv("db.stop", env=env).stdout
        wiped = inv("db.reset", "--yes", "--wipe", env=env)
        assert wiped.returncode == 0, wiped.stderr
        assert not os.path.exists(data_dir) and not (state / "postgres" / "cluster").exists()
    finally:
        inv("server.stop", env=env)
        inv("db.reset", "--yes", "--wipe", env=env)
        shutil.rmtree(closed, ignore_errors=True)


def test_a_checkout_cloned_again_at_the_same_path_gets_a_cluster_of_its_own_and_the_old_one_is_kept():
    """Root, state dir under a closed folder: the cluster lives in the postgres user's home, keyed by
    the state dir's path. Deleting the state dir and making it again (a fresh clone at the same
    path) must not adopt the old cluster (its password went with the old state dir) nor remove it."""
    closed, state, env = _checkout_in_a_closed_folder()
    old_data = None
    try:
        first = inv("db.start", env=env)
        assert first.returncode == 0, first.stderr
        old_data = Path(first.stdout.split("(data: ")[1].split(")")[0])
        assert inv("db.stop", env=env).returncode == 0
        for item in state.iterdir():  # a fresh state dir; the test's own config file stays
            if item.name != "hermetic.yaml":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        again = inv("db.start", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        new_data = Path(again.stdout.split("(data: ")[1].split(")")[0])
        assert new_data != old_data and (old_data / "PG_VERSION").is_file()
        assert f"left alone: {old_data.parent}" in again.stdout
        server = inv("server.start", "--backend", "postgres", env=env)
        assert server.returncode == 0, server.stdout + server.stderr
    finally:
        inv("server.stop", env=env)
        inv("db.reset", "--yes", "--wipe", env=env)
        if old_data is not None:
            shutil.rmtree(old_data.parent, ignore_errors=True)
        shutil.rmtree(closed, ignore_errors=True)


# --- the password with URI characters, end to end ----------------------------------------


@pytest.fixture(scope="module")
def cli_postgres():
    """A local PostgreSQL made by `inv db.start` with PASSWORD, for this module."""
    state = make_state_dir()
    env = hermetic_env(state, POSTGRES__PASSWORD=PASSWORD, POSTGRES__PROVIDER="local")
    outputs = [inv("db.start", env=env)]
    try:
        assert outputs[0].returncode == 0, outputs[0].stderr
        yield state, env, load_settings(environ=env).settings, outputs
    finally:
        inv("server.stop", env=env)
        inv("db.stop", env=env)
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.integration
def test_password_with_uri_characters_works_and_is_never_shown(cli_postgres):
    state, env, settings, outputs = cli_postgres
    started = inv("server.start", "--backend", "postgres", env=env)
    outputs.append(started)
    assert started.returncode == 0, started.stderr
    client = MlflowClient(settings.server.url)
    run = client.create_run(client.create_experiment("password-e2e"))
    client.log_metric(run.info.run_id, "loss", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}

    record = ServerRecord.read(ServerPaths.of(settings).pid_file)
    assert record is not None
    db = LocalPostgres(settings.model_copy(update={"backend": "postgres"}))
    postmaster = psutil.Process(db.postmaster_pid())
    processes = [*group_members(record.pgid), postmaster, *postmaster.children(recursive=True)]
    assert len(processes) >= 4
    for proc in processes:
        cmdline = " ".join(proc.cmdline())
        assert PASSWORD not in cmdline and quote(PASSWORD, safe="") not in cmdline, proc.pid
    for args in (["server.status"], ["server.logs"], ["db.status"], ["db.url"], ["db.logs"], ["config.show"]):
        outputs.append(inv(*args, env=env))
        assert outputs[-1].returncode == 0, (args, outputs[-1].stderr)
    texts = [o.stdout + o.stderr for o in outputs]
    texts += [ServerPaths.of(settings).log_file.read_text(), (state / "postgres" / "postgres.log").read_text()]
    for text in texts:
        assert PASSWORD not in text and quote(PASSWORD, safe="") not in text


@pytest.mark.integration
def test_postgres_runs_as_an_unprivileged_user_when_we_are_root(cli_postgres):
    if not _root():
        pytest.skip("only meaningful as root")
    _, _, settings, _ = cli_postgres
    user = pwd.getpwnam(settings.postgres.local.os_user)
    db = LocalPostgres(settings.model_copy(update={"backend": "postgres"}))
    postmaster = psutil.Process(db.postmaster_pid())
    for proc in [postmaster, *postmaster.children(recursive=True)]:
        assert proc.uids().real == user.pw_uid != 0 and proc.uids().effective == user.pw_uid


@pytest.mark.integration
def test_wrong_password_with_uri_characters_is_one_line_and_never_shown(cli_postgres):
    state, env, settings, _ = cli_postgres
    assert inv("server.stop", env=env).returncode == 0
    wrong = dict(env, MLFLOW_OPS_POSTGRES__PASSWORD=WRONG)
    proc = inv("server.start", "--backend", "postgres", env=wrong)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'password authentication failed for user "mlflow_user"' in lines[0]
    assert WRONG not in proc.stdout + proc.stderr and quote(WRONG, safe="") not in proc.stdout + proc.stderr
    assert not ServerPaths.of(settings).pid_file.exists()
    assert [p for p in processes_in(state) if p.name() != "postgres"] == []  # the cluster runs on


def _root() -> bool:
    return os.geteuid() == 0


def _engine_answers() -> bool:
    from tasks.libs.postgres.container import engine_answers

    return engine_answers()


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(
            ["db.restore", "--backend", "sqlite"],
            ["no sqlite backup in", "inv db.backup --backend sqlite"],
            id="restore-without-backup",
        ),
        pytest.param(
            ["db.backup", "--backend", "sqlite"],
            ["no SQLite store at", "nothing to back up"],
            id="backup-without-store",
        ),
        pytest.param(["db.gc", "--older-than", "soon"], ["--older-than: 'soon' is not a duration"], id="gc-bad-age"),
        pytest.param(
            ["db.upgrade", "--apply", "--to", "3.18.0"],
            ["--apply upgrades with the installed MLflow"],
            id="apply-with-to",
        ),
        pytest.param(["db.migrate", "--rewrite-artifact-root", "nope"], ["write OLD=NEW"], id="migrate-bad-rewrite"),
        pytest.param(["db.vacuum", "--backend", "sqlite"], ["no SQLite store at"], id="vacuum-without-store"),
    ],
)
def test_store_lifecycle_refusals_are_one_line(args, expected):
    state_dir = make_state_dir()
    try:
        assert_refused(inv(*args, env=hermetic_env(state_dir)), state_dir, *expected)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
