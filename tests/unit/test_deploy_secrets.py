"""No secret in any written file; with --write-secrets, only in the one secrets file, mode 0600."""

from __future__ import annotations

import stat
from typing import Any

import pytest
import yaml

from tasks.libs.core.errors import UserError
from tasks.libs.deploy.writer import Written, export
from tests.support.deploy import env_file_values, profile_settings

KNOWN = "Kn0wn-Pa55word-xyz"  # every secret below contains it
SECRETS_FILE = {"compose": ".env", "helm": "secrets.yaml", "systemd": "mlflow-ops.env"}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # external PostgreSQL with the password in its URI, S3 keys, admin password, gc
    "prod": (
        "prod",
        {
            "postgres.uri": f"postgresql://mlflow_user:{KNOWN}-pg@db.example.internal:5432/mlflow",
            "server.auth.admin_password": f"{KNOWN}-admin",
            "artifacts.s3.access_key_id": f"{KNOWN}-id",
            "artifacts.s3.secret_access_key": f"{KNOWN}-s3",
        },
    ),
    # our own PostgreSQL (Compose runs it), password from config, auth on PostgreSQL, gc
    "ci on postgres with auth": (
        "ci",
        {
            "backend": "postgres",
            "postgres.password": f"{KNOWN}-pg",
            "server.auth.enabled": True,
            "server.auth.admin_password": f"{KNOWN}-admin",
            "server.workers": 1,
            "deploy.gc.enabled": True,
        },
    ),
}


def export_all(tmp_path, case: str, *, write_secrets: bool) -> dict[str, Written]:
    profile, overrides = CASES[case]
    settings = profile_settings(profile, state_dir=str(tmp_path / "state"), **overrides)
    written = {}
    for fmt in ("compose", "helm", "systemd"):
        if (case, fmt) == ("ci on postgres with auth", "helm"):
            continue  # refused: pods cannot reach this machine's PostgreSQL
        written[fmt] = export(settings, fmt, profile=profile, out=tmp_path / fmt, write_secrets=write_secrets)
    return written


@pytest.mark.parametrize("case", CASES)
def test_no_written_file_holds_a_secret(case, tmp_path):
    written = export_all(tmp_path, case, write_secrets=False)
    files = [p for fmt in written for p in (tmp_path / fmt).iterdir()]
    assert len(files) >= 8
    leaks = [str(p) for p in files if KNOWN in p.read_text()]
    assert leaks == []
    assert all(not w.secret_files for w in written.values())


@pytest.mark.parametrize("case", CASES)
def test_write_secrets_puts_them_in_one_private_file_per_format(case, tmp_path):
    written = export_all(tmp_path, case, write_secrets=True)
    for fmt, result in written.items():
        assert result.secret_files == [SECRETS_FILE[fmt]]
        secret_file = tmp_path / fmt / SECRETS_FILE[fmt]
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert KNOWN in secret_file.read_text()
        others = [p.name for p in (tmp_path / fmt).iterdir() if p != secret_file and KNOWN in p.read_text()]
        assert others == [], fmt


def test_the_written_secrets_are_the_configured_ones(tmp_path):
    export_all(tmp_path, "prod", write_secrets=True)
    env = env_file_values((tmp_path / "systemd" / "mlflow-ops.env").read_text())
    assert env["PGPASSWORD"] == f"{KNOWN}-pg"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == env["MLFLOW_TRACKING_PASSWORD"] == f"{KNOWN}-admin"
    assert env["AWS_SECRET_ACCESS_KEY"] == f"{KNOWN}-s3"
    compose_env = (tmp_path / "compose" / ".env").read_text()
    assert f"POSTGRES_PASSWORD='{KNOWN}-pg'" in compose_env
    secrets = {
        d["metadata"]["name"]: d["stringData"]
        for d in yaml.safe_load_all((tmp_path / "helm" / "secrets.yaml").read_text())
    }
    assert secrets["mlflow-ops-db"] == {"username": "mlflow_user", "password": f"{KNOWN}-pg"}


def test_a_missing_password_refuses_before_anything_is_generated_or_written(tmp_path):
    settings = profile_settings("prod", state_dir=str(tmp_path / "state"))  # the URI holds no password
    with pytest.raises(UserError, match="no PostgreSQL password to write: .* MLFLOW_OPS_POSTGRES__PASSWORD"):
        export(settings, "systemd", profile="prod", out=tmp_path / "out", write_secrets=True)
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["compose", "helm", "systemd"])
def test_tls_files_are_written_only_with_write_secrets_and_the_key_is_private(fmt, tmp_path):
    settings = profile_settings(
        "prod",
        **{"state_dir": str(tmp_path / "state"), "server.tls.enabled": True, **CASES["prod"][1]},
    )
    plain = export(settings, fmt, profile="prod", out=tmp_path / "plain", write_secrets=False)
    assert not (plain.out / "tls").exists()
    key_lines: list[str] = []
    written = export(settings, fmt, profile="prod", out=tmp_path / "out", write_secrets=True)
    key_file = settings.state_path / "secrets" / "tls" / "server.key"
    key_lines = [line for line in key_file.read_text().splitlines() if not line.startswith("-----")]
    for name in written.files:  # no key in any file that is not a secrets file
        assert not any(line in (written.out / name).read_text() for line in key_lines), name
    if fmt == "helm":
        objects = list(yaml.safe_load_all((written.out / "secrets.yaml").read_text()))
        (tls_secret,) = [o for o in objects if o and o["type"] == "kubernetes.io/tls"]
        assert (
            tls_secret["metadata"]["name"] == "mlflow-ops-tls" and "PRIVATE KEY" in tls_secret["stringData"]["tls.key"]
        )
        return
    assert stat.S_IMODE((written.out / "tls" / "server.key").stat().st_mode) == 0o600
    assert (written.out / "tls" / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    from tasks.libs.core import certificates

    assert certificates.covers(
        certificates.load_cert(written.out / "tls" / "server.crt"), "mlflow.example.com"
    )  # deploy.public_host
