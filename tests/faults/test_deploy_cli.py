"""`inv deploy.*` as a user runs it: byte-identical re-runs, a refusal in one line, secrets kept private."""

from __future__ import annotations

import stat

from tests.support.cli import hermetic_env, inv


def test_export_twice_is_byte_identical_and_checks_clean(state_dir, tmp_path):
    env = hermetic_env(state_dir)
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        done = inv("deploy.compose", "--profile", "prod", "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in first.iterdir())
    assert names == [".env.example", "Dockerfile", "docker-compose.yaml"]
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    checked = inv("deploy.check", str(first), env=env)
    assert checked.returncode == 0 and "valid compose files" in checked.stdout, checked.stdout + checked.stderr


def test_a_guardrail_refusal_is_one_line_and_writes_nothing(state_dir, tmp_path):
    env = hermetic_env(state_dir, backend="postgres")
    out = tmp_path / "helm"
    done = inv("deploy.helm", "--out", str(out), env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot export helm: postgres.provider"), done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_check_names_the_problem_of_a_broken_file(state_dir, tmp_path):
    env = hermetic_env(state_dir)
    out = tmp_path / "compose"
    assert inv("deploy.compose", "--out", str(out), env=env).returncode == 0
    compose = out / "docker-compose.yaml"
    compose.write_text(compose.read_text() + "bogus_top: 1\n")
    done = inv("deploy.check", str(out), env=env)
    assert done.returncode == 1
    assert "additional properties 'bogus_top' not allowed" in done.stdout
    assert "Traceback" not in done.stderr


def test_write_secrets_writes_a_private_env_file_and_shows_no_secret(state_dir, tmp_path):
    state = state_dir
    env = hermetic_env(state, server__auth__enabled="true")
    out = tmp_path / "systemd"
    done = inv("deploy.systemd", "--write-secrets", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    secret_file = out / "mlflow-ops.env"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    password = (state / "secrets" / "admin_password").read_text().strip()
    assert f"MLFLOW_AUTH_ADMIN_PASSWORD='{password}'" in secret_file.read_text()
    assert password not in done.stdout + done.stderr
    assert all(password not in p.read_text() for p in out.iterdir() if p != secret_file)
