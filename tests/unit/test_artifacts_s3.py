"""S3 artifacts and server metrics: bucket keys per mode, pre-checks, the metrics folder."""

from __future__ import annotations

import pytest

from tasks.libs.artifacts.s3 import BucketView
from tasks.libs.core.errors import ConfigError, UserError
from tasks.libs.core.programs import require_module
from tasks.libs.server.control import prepare_metrics_dir
from tests.support.settings import make_settings


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_cross_key_error_never_echoes_a_section_with_a_secret(tmp_path):
    with pytest.raises(ConfigError) as exc:
        make_settings(tmp_path, **{"artifacts.mode": "direct", "artifacts.s3.secret_access_key": "SEKRET-123"})
    assert "SEKRET" not in one_line(exc) and "needs artifacts.store s3" in str(exc.value)


@pytest.mark.parametrize(
    "mode, uri, key",
    [
        ("proxied", "mlflow-artifacts:/1/abc/artifacts", "runs/1/abc/artifacts"),
        ("direct", "s3://bkt/runs/1/abc/artifacts", "runs/1/abc/artifacts"),
        ("direct", "s3://other-bucket/runs/1/abc", None),
        (
            "split",
            "http://127.0.0.1:3114/api/2.0/mlflow-artifacts/artifacts/experiments/1/abc/artifacts",
            "runs/experiments/1/abc/artifacts",
        ),
        ("proxied", "file:///tmp/x", None),
    ],
)
def test_artifact_uris_map_to_bucket_keys(tmp_path, mode, uri, key):
    settings = make_settings(
        tmp_path,
        **{
            "artifacts.store": "s3",
            "artifacts.mode": mode,
            "artifacts.s3.bucket": "bkt",
            "artifacts.s3.prefix": "runs",
        },
    )
    view = BucketView.of(settings)
    assert view.key_for(uri) == key
    if key:
        assert view.experiment_of(key) == "1"


def test_metrics_folder_is_emptied_before_a_start(tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    for name in ("counter_101.db", "histogram_101.db", "gauge_max_102.db"):
        (folder / name).write_bytes(b"old counts")
    prepare_metrics_dir(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_missing_python_package_is_one_line_before_any_start():
    with pytest.raises(UserError) as exc:
        require_module("prometheus_flask_exporter_not_there", "server.metrics")
    assert "server.metrics needs the Python package" in one_line(exc) and "pip install -e ." in str(exc.value)
    require_module("boto3", "artifacts.store s3")
    require_module("prometheus_flask_exporter", "server.metrics")
