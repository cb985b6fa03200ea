"""Artifacts in the embedded S3 (a real moto server) in MLflow's three modes: the deployment checks
pass, the storage check and inspect.sizes read the bucket, and a broken bucket fails them."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.libs.artifacts.s3 import BucketView, EmbeddedS3, where_artifacts_are
from tasks.libs.checks.runner import run_checks
from tasks.libs.checks.storage import storage_arguments
from tasks.libs.core.credentials import backend_store_uri
from tasks.libs.core.processes import free_port, port_is_free
from tasks.libs.reporting.records import FAIL, PASS, SKIPPED
from tasks.libs.server.control import ServerPaths, start_server, stop_server
from tasks.libs.server.sidecars import ArtifactsServer
from tasks.libs.store.inspection import inspect_store
from tests.support.checks import by_name
from tests.support.cli import processes_in
from tests.support.settings import make_settings, make_state_dir

pytestmark = pytest.mark.integration
MODES = ("proxied", "direct", "split")


@pytest.fixture(scope="module")
def servers():
    """One SQLite server per mode, each with its own embedded S3, started together."""
    made = {}
    for mode in MODES:
        made[mode] = make_settings(
            make_state_dir(),
            **{
                "artifacts.store": "s3",
                "artifacts.mode": mode,
                "artifacts.s3.port": free_port(),
                "artifacts.artifacts_server.port": free_port(),
                "server.workers": 1,
            },
        )
    with ThreadPoolExecutor(len(made)) as pool:
        started = list(pool.map(lambda s: _start(s), made.values()))
    try:
        problems = [p for p in started if p]
        assert not problems, problems
        yield made
    finally:
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(stop_server, made.values()))
        for settings in made.values():
            assert processes_in(settings.state_path) == [], "something of the server is still running"
            assert not EmbeddedS3(settings).process.pid_file.exists() and port_is_free(
                "127.0.0.1", settings.artifacts.s3.port
            )
            shutil.rmtree(settings.state_path, ignore_errors=True)


def _start(settings) -> str | None:
    try:
        start_server(settings)
        return None
    except Exception as exc:  # reported by the fixture, after every start has ended
        return f"{settings.artifacts.mode}: {exc}"


@pytest.mark.parametrize("mode", MODES)
def test_deployment_checks_pass_with_artifacts_in_the_bucket(servers, mode, tmp_path):
    settings = servers[mode]
    report = run_checks(
        settings.server.url,
        report_dir=tmp_path,
        store_uri=backend_store_uri(settings, reveal=True),
        browser=None,
        **storage_arguments(settings),
    )
    checks = by_name(report)
    assert checks.pop("web UI").status == SKIPPED
    assert all(c.status == PASS for c in checks.values()), {n: (c.status, c.reason) for n, c in checks.items()}
    assert f"artifact objects in s3://{settings.artifacts.s3.bucket}/artifacts" in checks["storage"].reason
    # nothing went to the local artifact folder: the bucket holds it all
    assert not settings.artifacts_dir.exists() or not any(settings.artifacts_dir.rglob("*"))

    usage = BucketView.of(settings).usage()
    assert report.experiment_id in usage["per_experiment"], usage
    assert usage["per_experiment"][report.experiment_id]["objects"] >= 6  # the file, MLmodel and the model's files
    sizes = inspect_store(backend_store_uri(settings, reveal=True), where_artifacts_are(settings), sections=["sizes"])
    art = sizes["sizes"]["artifacts"]
    assert art["bucket"] == f"s3://{settings.artifacts.s3.bucket}/artifacts"
    assert art["objects"] == usage["objects"] and art["total_bytes"] == usage["bytes"]
    runs = {r["run_id"]: r for r in art["per_run"]}
    assert report.run_id in runs and runs[report.run_id]["objects"] >= 1
    assert {e["experiment_id"]: e["owned"] for e in art["per_experiment"]}[report.experiment_id] is True


def test_split_mode_runs_an_artifacts_only_server_that_clients_are_sent_to(servers):
    settings = servers["split"]
    record = ArtifactsServer(settings).running()
    assert record is not None and record.port == settings.artifacts.artifacts_server.port
    from mlflow import MlflowClient

    client = MlflowClient(settings.server.url)
    exp = client.get_experiment(client.create_experiment("split-root"))
    assert exp.artifact_location.startswith(f"{ArtifactsServer(settings).url}/api/2.0/mlflow-artifacts/artifacts/")


def test_an_object_missing_from_the_bucket_fails_the_storage_check(servers, tmp_path):
    settings = servers["proxied"]
    bucket = BucketView.of(settings)

    def delete_the_model_file(result):
        if result.name == "model":  # after the model is logged, before the storage check compares
            for key in [key for key, _ in bucket.objects() if key.endswith("/MLmodel")]:
                bucket.client().delete_object(Bucket=bucket.bucket, Key=key)

    report = run_checks(
        settings.server.url,
        report_dir=tmp_path,
        store_uri=backend_store_uri(settings, reveal=True),
        browser=None,
        on_result=delete_the_model_file,
        **storage_arguments(settings),
    )
    storage = by_name(report)["storage"]
    assert storage.status == FAIL and "the logged model has no MLmodel object at s3://mlflow/" in storage.reason


def test_a_dead_bucket_fails_the_artifact_check_while_the_server_stays_up(servers, tmp_path):
    settings = servers["direct"]  # last user of this server: its S3 goes away for good
    EmbeddedS3(settings).stop()
    report = run_checks(
        settings.server.url,
        report_dir=tmp_path,
        store_uri=backend_store_uri(settings, reveal=True),
        browser=None,
        **storage_arguments(settings),
    )
    checks = by_name(report)
    assert checks["experiment"].status == PASS and checks["metrics"].status == PASS
    assert checks["artifact"].status == FAIL and checks["model"].status == FAIL
    assert ServerPaths.of(settings).pid_file.exists()
