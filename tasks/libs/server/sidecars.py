"""What the tracking server leans on for artifacts: the embedded S3 and split mode's artifacts server.

Both are shared: `server.start` and `cluster.up` each hold them while they run, and the
last to let go stops them (the embedded S3 keeps its objects in memory, so stopping it
under a running server would lose what that server wrote). A holder is a file in
<state_dir>/artifact-services/; a holder that crashed is released by its own stop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tasks.libs.artifacts.location import artifact_root, artifacts_server_command, artifacts_server_url, s3_env
from tasks.libs.artifacts.s3 import EmbeddedS3, embedded_s3_used, require_boto3
from tasks.libs.core.credentials import known_secrets, store_uri_and_password_env
from tasks.libs.core.managed import Launch, Listener, ManagedProcess
from tasks.libs.core.processes import ProcessRecord
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import client_ca
from tasks.libs.server.probes import health

HOLDERS = ("server", "cluster")


@dataclass
class ArtifactsServerRecord(ProcessRecord):
    """The --artifacts-only server's pid file."""

    port: int
    url: str
    log: str


def split_mode(settings: Settings) -> bool:
    return settings.artifacts.store == "s3" and settings.artifacts.mode == "split"


def start_artifact_services(settings: Settings, holder: str) -> list[str]:
    """Start what the configured artifact store needs (reusing what runs) and hold it for holder."""
    require_boto3(settings)
    messages = []
    if embedded_s3_used(settings):
        messages.append(EmbeddedS3(settings).start())
    if split_mode(settings):
        messages.append(ArtifactsServer(settings).start())
    if messages:
        _holder_file(settings, holder).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _holder_file(settings, holder).touch(mode=0o600)
    return messages


def stop_artifact_services(settings: Settings, holder: str) -> list[str]:
    """Let go for holder; stop the services when no other holder remains. Messages say what happened."""
    _holder_file(settings, holder).unlink(missing_ok=True)
    others = [h for h in HOLDERS if _holder_file(settings, h).exists()]
    if others:
        running = [name for name, up in _running(settings).items() if up]
        return [f"{' and '.join(running)} left running for the {others[0]}"] if running else []
    messages = []
    if ArtifactsServer(settings).running():
        messages.append(ArtifactsServer(settings).stop())
    if EmbeddedS3(settings).running():
        messages.append(EmbeddedS3(settings).stop())
    return messages


def artifact_services_status(settings: Settings) -> dict[str, str]:
    out: dict[str, str] = {}
    if embedded_s3_used(settings):
        out.update(EmbeddedS3(settings).status())
    if split_mode(settings):
        record = ArtifactsServer(settings).running()
        out["artifacts server"] = f"{record.url} (pid {record.pid})" if record else "not running"
    return out


def _running(settings: Settings) -> dict[str, bool]:
    return {
        "the embedded S3": EmbeddedS3(settings).running() is not None,
        "the artifacts server": ArtifactsServer(settings).running() is not None,
    }


def _holder_file(settings: Settings, holder: str) -> Path:
    return settings.state_path / "artifact-services" / holder


class ArtifactsServer:
    """`mlflow server --artifacts-only`: serves the artifact store (bucket or folder), knows no run store.

    Split mode's artifacts server; also the short-lived helper `mlflow gc` needs to delete proxied
    artifacts when no server of ours runs (name keeps its pid file and log apart).
    """

    def __init__(self, settings: Settings, *, name: str = "artifacts-server"):
        self.settings = settings
        self.cfg = settings.artifacts.artifacts_server
        folder = settings.state_path / "server"
        self.url = artifacts_server_url(settings)
        self.process = ManagedProcess(
            "the artifacts server",
            pid_file=folder / f"{name}.pid",
            log_file=folder / f"{name}.log",
            record=ArtifactsServerRecord,
            grace=settings.server.stop_grace,
            secrets=lambda: known_secrets(settings),
        )

    def start(self) -> str:
        current = self.running()
        if current:
            return f"artifacts server already running at {current.url} (pid {current.pid}); reused"
        # MLflow refuses a store URI in --artifacts-only mode, even one from the environment.
        env = {
            k: v for k, v in os.environ.items() if k not in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_REGISTRY_STORE_URI")
        }
        env.update(s3_env(self.settings))
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if self.settings.server.workspaces:
            # --artifacts-only --enable-workspaces reads the workspaces from the tracking store (no password in it).
            store_uri, password_env = store_uri_and_password_env(self.settings)
            env.update(password_env, MLFLOW_WORKSPACE_STORE_URI=store_uri)
        launch = Launch(
            command=artifacts_server_command(self.settings),
            env=env,
            cwd=self.process.pid_file.parent,
            ready=lambda: None if health(self.url, ca=client_ca(self.settings)) else "/health does not answer",
            timeout=self.settings.server.start_timeout,
            listeners=[Listener(self.settings.server.host, self.cfg.port, "set artifacts.artifacts_server.port")],
            fields=dict(port=self.cfg.port, url=self.url, log=str(self.process.log_file)),
        )
        self.process.start(launch)
        return f"artifacts server ready at {self.url} (--artifacts-only, {artifact_root(self.settings)})"

    def stop(self) -> str:
        return self.process.stop()

    def running(self) -> ArtifactsServerRecord | None:
        return self.process.running()
