"""Helm values against our schema (jsonschema), our own objects against Kubernetes' (kubernetes-validate
--strict), and the real chart rendered when one is at hand. Each must reject a planted mistake."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from tasks.libs.core.errors import UserError
from tasks.libs.deploy.validate import (
    CHART_ENV,
    check_helm,
    check_manifests,
    check_rendered,
    check_values,
    our_manifests,
)
from tasks.libs.deploy.writer import export, render
from tests.support.deploy import GOLDEN_DIR, profile_settings

pytest.importorskip("jsonschema")
pytest.importorskip("kubernetes_validate")


def golden_values(case: str) -> dict:
    return yaml.safe_load((GOLDEN_DIR / case / "helm" / "values.yaml").read_text())


@pytest.mark.parametrize("case", ["ci", "prod"])
def test_written_values_and_objects_are_valid(case):
    assert check_helm(GOLDEN_DIR / case / "helm") == []


def test_our_objects_are_all_checked():
    kinds = sorted(doc["kind"] for _, doc in our_manifests(GOLDEN_DIR / "ci" / "helm", golden_values("ci")))
    assert kinds == ["PersistentVolumeClaim", "Pod"]  # the claim, the init containers as a Pod
    kinds = sorted(doc["kind"] for _, doc in our_manifests(GOLDEN_DIR / "prod" / "helm", golden_values("prod")))
    assert kinds == ["CronJob"]


def planted(edit) -> dict:
    values = copy.deepcopy(golden_values("prod"))
    edit(values)
    return values


@pytest.mark.parametrize(
    ("mistake", "edit", "message"),
    [
        (
            "unknown top-level key",
            lambda v: v.update(bogusKey=1),
            "<top>: Additional properties are not allowed ('bogusKey'",
        ),
        (
            "unknown nested key",
            lambda v: v["backendStore"]["postgres"].update(hostname="x"),
            "backendStore.postgres: Additional properties are not allowed ('hostname'",
        ),
        (
            "workers as a number",
            lambda v: v["extraArgs"].update(workers=2),
            "extraArgs.workers: 2 is not of type 'string'",
        ),
        ("strategy misspelt", lambda v: v["strategy"].update(type="Rolling"), "strategy.type: 'Rolling' is not one of"),
    ],
)
def test_schema_rejects_a_planted_mistake(mistake, edit, message):
    problems = check_values(planted(edit))
    assert problems and message in problems[0], problems


def test_kubernetes_validate_rejects_a_misspelt_field_in_our_cronjob():
    cron = yaml.safe_load((GOLDEN_DIR / "prod" / "helm" / "gc-cronjob.yaml").read_text())
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolice"] = "Always"
    problems = check_manifests([("gc-cronjob.yaml", cron)])
    assert problems and "Additional properties are not allowed ('imagePullPolice'" in problems[0]


def test_kubernetes_validate_rejects_a_bad_claim_in_extra_deploy():
    values = golden_values("ci")
    values["extraDeploy"][0]["spec"]["accessModes"] = "ReadWriteOnce"  # a list in Kubernetes
    problems = check_manifests(our_manifests(GOLDEN_DIR / "ci" / "helm", values))
    assert problems and "is not of type 'array'" in problems[0]


def test_written_secrets_file_is_valid_kubernetes(tmp_path):
    settings = profile_settings(
        "prod",
        state_dir=str(tmp_path / "state"),
        **{
            "postgres.uri": "postgresql://mlflow_user:pw@db.example.internal:5432/mlflow",
            "artifacts.s3.access_key_id": "AKID",
            "artifacts.s3.secret_access_key": "s3cret",
        },
    )
    written = export(settings, "helm", profile="prod", out=tmp_path / "out", write_secrets=True)
    assert written.secret_files == ["secrets.yaml"]
    assert check_helm(tmp_path / "out") == []
    kinds = [d["kind"] for d in yaml.safe_load_all((tmp_path / "out" / "secrets.yaml").read_text())]
    assert kinds == ["Secret"] * 4


@pytest.mark.skipif(
    not os.environ.get(CHART_ENV),
    reason=f"{CHART_ENV} names no unpacked community-charts/mlflow 1.11.5 (the chart cannot be downloaded on "
    "machines that reach only package registries); `helm pull community-charts/mlflow --version 1.11.5 --untar` "
    "elsewhere and point it there, with helm-python-sdk installed",
)
@pytest.mark.parametrize("case", ["ci", "prod"])
def test_the_real_chart_renders_our_values_into_valid_objects(case):
    pytest.importorskip("helm_python")
    chart = Path(os.environ[CHART_ENV])
    assert check_rendered(chart, golden_values(case)) == []
    bad = golden_values(case)
    bad["extraArgs"]["workers"] = 2
    problems = check_rendered(chart, bad)
    assert problems and "workers" in problems[0]


def test_postgres_uri_options_reach_the_chart_as_libpq_variables():
    settings = profile_settings(
        "prod", **{"postgres.uri": "postgresql://mlflow_user@db.example.internal/mlflow?sslmode=require"}
    )
    values = yaml.safe_load(render(settings, "helm", "prod")["values.yaml"])
    assert values["extraEnvVars"]["PGSSLMODE"] == "require"
    assert check_values(values) == []
    unknown = profile_settings(
        "prod", **{"postgres.uri": "postgresql://mlflow_user@db.example.internal/mlflow?foo=bar"}
    )
    with pytest.raises(UserError, match="postgres.uri option 'foo' has no libpq variable"):
        render(unknown, "helm", "prod")
