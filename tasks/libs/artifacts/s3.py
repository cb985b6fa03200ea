"""Artifacts in S3: the embedded S3 API (moto) we run for trying and tests, and reading a bucket.

The embedded store is `python -m moto.server` (moto[s3]) as our own process group, with a
typed pid file in <state_dir>/s3. Ready means a real `list_buckets` answers (0.5-0.9 s after
exec here); the bucket is created on start. moto keeps everything in memory: a restart
loses every object, so it is for trying things out and for tests, never for data anyone
keeps (`artifacts.s3.provider: external` names a real S3 API).

BucketView reads a bucket (embedded or external) for the storage check and `inspect.sizes`: which
key an artifact URI maps to, and the objects and bytes under the prefix per experiment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tasks.libs.artifacts.location import s3_credentials, s3_endpoint, s3_env
from tasks.libs.core.credentials import known_secrets
from tasks.libs.core.managed import Launch, Listener, ManagedProcess
from tasks.libs.core.processes import ProcessRecord
from tasks.libs.core.programs import require_module
from tasks.libs.core.settings import Settings


@dataclass
class S3Record(ProcessRecord):
    """The embedded S3's pid file."""

    host: str
    port: int
    url: str
    bucket: str
    log: str


@dataclass(frozen=True)
class BucketView:
    """How to read the configured bucket: endpoint, credentials, bucket, prefix and mode."""

    endpoint: str | None
    region: str
    credentials: tuple[str, str] | None
    bucket: str
    prefix: str
    mode: str

    @classmethod
    def of(cls, settings: Settings) -> BucketView:
        s3 = settings.artifacts.s3
        return cls(
            s3_endpoint(settings), s3.region, s3_credentials(settings), s3.bucket, s3.prefix, settings.artifacts.mode
        )

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def experiments_prefix(self) -> str:
        """Where experiment folders start: split mode's artifacts server keeps them under experiments/."""
        parts = [self.prefix] if self.prefix else []
        if self.mode == "split":
            parts.append("experiments")
        return "/".join(parts)

    def client(self) -> Any:
        require_module("boto3", "artifacts.store s3")
        import boto3
        import botocore.config

        key, secret = self.credentials or (None, None)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=botocore.config.Config(connect_timeout=2, read_timeout=20, retries={"max_attempts": 2}),
        )

    def key_for(self, uri: str | None) -> str | None:
        """The bucket key an artifact URI stands for, or None when it is not in this bucket.

        s3://bucket/key (direct), mlflow-artifacts:/path (proxied: under the prefix), and
        http://host/api/2.0/mlflow-artifacts/artifacts/path (split: under the prefix too).
        """
        if not uri:
            return None
        parsed = urlparse(uri)
        path = unquote(parsed.path)
        if parsed.scheme == "s3":
            return path.lstrip("/") if parsed.netloc == self.bucket else None
        if parsed.scheme == "mlflow-artifacts":
            relative = path.lstrip("/")
        elif parsed.scheme in ("http", "https") and "/api/2.0/mlflow-artifacts/artifacts/" in path:
            relative = path.split("/api/2.0/mlflow-artifacts/artifacts/", 1)[1]
        else:
            return None
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def experiment_of(self, key: str) -> str:
        """The experiment folder a key is in (its id), or a note when it lies outside them.

        A workspace's experiments are one level deeper: workspaces/<name>/<id>."""
        root = self.experiments_prefix
        if root and not key.startswith(root + "/"):
            return "(outside the experiments folder)"
        parts = key[len(root) :].lstrip("/").split("/")
        return parts[2] if parts[0] == "workspaces" and len(parts) > 3 else parts[0]

    def objects(self, prefix: str | None = None) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under prefix (default: the configured prefix)."""
        prefix = self.prefix if prefix is None else prefix
        listing = self.client().get_paginator("list_objects_v2")
        for page in listing.paginate(Bucket=self.bucket, Prefix=f"{prefix}/" if prefix else ""):
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"])

    def usage(self) -> dict[str, Any]:
        """Objects and bytes under the prefix, in total and per experiment folder."""
        total = count = 0
        per_experiment: dict[str, list[int]] = {}
        for key, size in self.objects():
            count += 1
            total += size
            entry = per_experiment.setdefault(self.experiment_of(key), [0, 0])
            entry[0] += 1
            entry[1] += size
        return {
            "bucket": self.uri,
            "objects": count,
            "bytes": total,
            "per_experiment": {k: {"objects": v[0], "bytes": v[1]} for k, v in sorted(per_experiment.items())},
        }


def where_artifacts_are(settings: Settings) -> Path | BucketView:
    """The configured server's artifacts: its folder, or the bucket (for inspection and the storage check)."""
    return BucketView.of(settings) if settings.artifacts.store == "s3" else settings.artifacts_dir


def require_boto3(settings: Settings) -> None:
    """S3 artifacts need boto3 in the servers' interpreter (ours), checked before any start."""
    if settings.artifacts.store == "s3":
        require_module("boto3", "artifacts.store s3")


# --- the embedded S3 API ----------------------------------------------------------------


class EmbeddedS3:
    """moto's S3 server as our own process group: <state_dir>/s3/{s3.pid,s3.log}."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg = settings.artifacts.s3
        self.root = settings.state_path / "s3"
        self.url = f"http://{self.cfg.host}:{self.cfg.port}"
        self.process = ManagedProcess(
            "the embedded S3",
            pid_file=self.root / "s3.pid",
            log_file=self.root / "s3.log",
            record=S3Record,
            grace=5,  # moto exits on SIGTERM at once
            secrets=lambda: known_secrets(settings),
        )

    def start(self) -> str:
        """Start it (or reuse ours) and make sure the bucket exists."""
        current = self.running()
        if current:
            self._ensure_bucket()
            return f"embedded S3 already running on {current.url} (pid {current.pid}); reused"
        require_module("moto", "the embedded S3 (artifacts.s3.provider embedded)")
        require_module("boto3", "artifacts.store s3")
        launch = Launch(
            command=[sys.executable, "-m", "moto.server", "-H", self.cfg.host, "-p", str(self.cfg.port)],
            # The credentials moto would print in a request log travel in its environment only.
            env={**os.environ, **s3_env(self.settings)},
            cwd=self.root,
            ready=self._bucket_problem,
            timeout=self.cfg.start_timeout,
            listeners=[Listener(self.cfg.host, self.cfg.port, "set artifacts.s3.port")],
            fields=dict(
                host=self.cfg.host,
                port=self.cfg.port,
                url=self.url,
                bucket=self.cfg.bucket,
                log=str(self.process.log_file),
            ),
        )
        self.process.start(launch)
        return f"embedded S3 started on {self.url}, bucket {self.cfg.bucket} (in memory: a restart loses its objects)"

    def stop(self) -> str:
        message = self.process.stop()
        return f"{message}; its objects are gone" if message.startswith("stopped") else message

    def status(self) -> dict[str, Any]:
        record = self.running()
        if record is None:
            return {"embedded S3": "not running"}
        return {"embedded S3": f"{record.url} (pid {record.pid}), bucket {record.bucket}"}

    def running(self) -> S3Record | None:
        return self.process.running()

    def _bucket_problem(self) -> str | None:
        """Ready once the bucket exists: a real S3 call answered (list_buckets, create_bucket)."""
        import botocore.exceptions

        try:
            self._ensure_bucket()
            return None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            return f"S3 API: {type(exc).__name__}"

    def _ensure_bucket(self) -> None:
        client = BucketView.of(self.settings).client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if self.cfg.bucket not in names:
            client.create_bucket(Bucket=self.cfg.bucket)


def embedded_s3_used(settings: Settings) -> bool:
    return settings.artifacts.store == "s3" and settings.artifacts.s3.provider == "embedded"
