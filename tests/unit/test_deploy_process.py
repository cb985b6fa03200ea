"""What a deployment runs is what `server.start` runs, argument for argument and variable for variable.

The expected side is built here from server_command()/server_own_env() on the same settings, with
the documented substitutions written out again (not the library's own code), so a change on either
side that is not a documented substitution fails.
"""

from __future__ import annotations

import mlflow
import pytest
import yaml

from tasks.libs.deploy import facts, process
from tasks.libs.deploy.process import SECRET_VARS, SecretRef, server_process, systemd_placement
from tasks.libs.deploy.systemd import exec_arg, exec_words
from tasks.libs.deploy.writer import render
from tasks.libs.server.command import metrics_dir, server_command, server_own_env
from tests.support.deploy import VARIANTS, settings_for, unescape_compose, unit_entries, unit_environment
from tests.support.settings import make_settings


@pytest.mark.parametrize("variant", VARIANTS)
def test_systemd_runs_exactly_the_server_start_command_and_environment(variant, tmp_path):
    settings = settings_for(tmp_path, variant)
    placed = server_process(settings, systemd_placement(settings))
    assert list(placed.argv) == server_command(settings)  # the same Python, paths, host and port
    own = server_own_env(settings)
    assert set(placed.env) == set(own)
    for key, value in own.items():
        if key in SECRET_VARS:
            assert placed.env[key] == SecretRef(key)
        elif key == "MLFLOW_AUTH_CONFIG_PATH":
            assert placed.env[key] == "/etc/mlflow-ops/basic_auth.ini"
        else:
            assert placed.env[key] == value, key


@pytest.mark.parametrize("variant", VARIANTS)
def test_systemd_unit_file_says_that_command_and_environment(variant, tmp_path):
    settings = settings_for(tmp_path, variant)
    unit = render(settings, "systemd", "test")["mlflow-ops.service"]
    exec_start = [v for k, v in unit_entries(unit) if k == "ExecStart"]
    assert [exec_words(line) for line in exec_start] == [server_command(settings)]
    own = server_own_env(settings)
    written = unit_environment(unit)
    assert set(written) == {k for k in own if k not in SECRET_VARS}
    assert all(written[k] == own[k] for k in written if k != "MLFLOW_AUTH_CONFIG_PATH")


def _container_expected(settings, value: str) -> str:
    """The documented container substitutions, written out independently of the library."""
    value = value.replace(str(settings.sqlite_file), "/mlflow/data/mlflow.db")
    value = value.replace(str(metrics_dir(settings)), "/tmp/prometheus")
    value = value.replace(str(settings.state_path), "/mlflow/data")
    if settings.backend == "postgres" and settings.postgres.provider != "external":
        value = value.replace(f"@{settings.postgres.host}:{settings.postgres.port}/", "@postgres:5432/")
    return value


@pytest.mark.parametrize("variant", VARIANTS)
def test_compose_mlflow_service_runs_the_server_start_command_with_container_substitutions(variant, tmp_path):
    settings = settings_for(tmp_path, variant)
    doc = yaml.safe_load(render(settings, "compose", "test")["docker-compose.yaml"])
    mlflow_service = doc["services"]["mlflow"]
    command = [unescape_compose(a) for a in mlflow_service["command"]]
    expected = ["mlflow", *[_container_expected(settings, a) for a in server_command(settings)[3:]]]
    expected[expected.index("--host") + 1] = "0.0.0.0"
    expected[expected.index("--port") + 1] = "5000"
    assert command == expected

    own = server_own_env(settings)
    env = mlflow_service["environment"]
    assert set(env) == set(own)
    for key, value in own.items():
        if key in SECRET_VARS:
            assert env[key].startswith("${") and env[key].endswith("}") and ":?" in env[key], key
        elif key == "MLFLOW_AUTH_CONFIG_PATH":
            assert env[key] == "/etc/mlflow/basic_auth.ini"
        else:
            assert unescape_compose(env[key]) == _container_expected(settings, value), key


def test_exec_words_reads_back_what_exec_arg_writes():
    args = ["/usr/bin/python3", "a b", 'q"uote', "back\\slash", "100%", "$HOME", "*.example.com", "", "--x=1,2"]
    assert exec_words(" ".join(exec_arg(a) for a in args)) == args


def test_a_secret_unknown_to_the_export_stops_it_instead_of_being_written(tmp_path, monkeypatch):
    settings = make_settings(tmp_path, **{"server.auth.enabled": True})
    real = process.server_own_env

    def with_new_secret(s):
        env = real(s)
        env["SOME_NEW_TOKEN"] = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]  # a generated secret, not in SECRET_VARS
        return env

    monkeypatch.setattr(process, "server_own_env", with_new_secret)
    with pytest.raises(RuntimeError, match="a secret would be written"):
        server_process(settings, systemd_placement(settings))


def test_exporting_writes_nothing_into_the_state_dir(tmp_path):
    settings = make_settings(tmp_path, **{"server.auth.enabled": True})
    for fmt in ("compose", "helm", "systemd"):
        render(settings, fmt, "test")
    assert not any(tmp_path.iterdir())


def test_the_pinned_mlflow_version_is_the_installed_one():
    # Bump facts.MLFLOW_VERSION with pyproject's pin (the Dockerfile installs it).
    assert mlflow.__version__ == facts.MLFLOW_VERSION
