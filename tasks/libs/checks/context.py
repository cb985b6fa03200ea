"""What every deployment check receives: the CheckContext (the client, the names the run
creates, what earlier checks made) and the run's defaults it carries."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.libs.reporting.records import Latency

DEFAULT_BROWSER = "/usr/bin/chromium"


@dataclass
class CheckContext:
    """What the checks share: the client, the names they create and what earlier checks made."""

    url: str
    client: Any  # mlflow.MlflowClient
    work_dir: Path
    report_dir: Path
    experiment_name: str
    run_name: str
    model_name: str
    store_uri: str | None = None
    store_skip_reason: str | None = None
    artifacts_dir: Path | None = None
    bucket: Any = None  # tasks.libs.artifacts.s3.BucketView when artifacts live in S3
    browser: str | None = DEFAULT_BROWSER
    ca_file: str | None = None  # the CA an https server's certificate is verified with (None: system store)
    workspace: str | None = None  # the checks' own workspace, when the server has workspaces on
    otlp_url: str | None = None  # where OTLP exporters reach the server, when not at url
    prompt_name: str = ""
    trace_name: str = ""  # the SDK trace's input and tag
    trace_ids: list[str] = field(default_factory=list)
    passed: set[str] = field(default_factory=set)  # the checks that passed so far
    experiment_id: str | None = None
    run_id: str | None = None
    model_info: Any = None
    screenshot: Path | None = None
    latencies: list[Latency] = field(default_factory=list)

    @contextlib.contextmanager
    def timed(self, kind: str, label: str) -> Iterator[None]:
        """Record how long the enclosed call took against the budget for kind."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.latencies.append(Latency(kind, label, time.perf_counter() - start))
