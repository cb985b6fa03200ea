"""Debian's prometheus-postgres-exporter as our own process: the series behind the PostgreSQL alerts.

It reads DATA_SOURCE_NAME from its environment (the password travels there, never argv) and
connects to the maintenance database `postgres`, so that its own session is not counted
against the MLflow database's connections. 13 MB RSS here.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass

from tasks.libs.core.credentials import known_secrets
from tasks.libs.core.managed import Launch, Listener, ManagedProcess
from tasks.libs.core.processes import ProcessRecord
from tasks.libs.core.programs import require_program
from tasks.libs.core.settings import Settings
from tasks.libs.postgres.connection import libpq_params, libpq_url


@dataclass
class ExporterRecord(ProcessRecord):
    port: int


class PostgresExporter:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = settings.monitoring.postgres_exporter.port
        self.root = settings.state_path / "monitoring"
        self.process = ManagedProcess(
            "postgres_exporter",
            pid_file=self.root / "postgres_exporter.pid",
            log_file=self.root / "postgres_exporter.log",
            record=ExporterRecord,
            secrets=lambda: known_secrets(settings),
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        current = self.running()
        if current:
            return f"postgres_exporter already running on {self.target} (pid {current.pid}); reused"
        binary = require_program("prometheus-postgres-exporter", "prometheus-postgres-exporter")
        # lib/pq requires TLS unless told otherwise (libpq only prefers it); its URL form, as the
        # exporter's own DSN parsing splits a key=value DSN on every space
        dsn = libpq_url({"sslmode": "disable", **libpq_params(self.settings, dbname="postgres")})
        env = {"PATH": os.environ.get("PATH", ""), "DATA_SOURCE_NAME": dsn}
        launch = Launch(
            command=[binary, f"--web.listen-address={self.target}", "--log.level=warn"],
            env=env,
            cwd=self.root,
            ready=self._pg_up_problem,
            timeout=30,
            listeners=[Listener("127.0.0.1", self.port, "set monitoring.postgres_exporter.port")],
            fields=dict(port=self.port),
        )
        self.process.start(launch)
        return f"postgres_exporter started on {self.target}"

    def stop(self) -> str:
        return self.process.stop()

    def running(self) -> ExporterRecord | None:
        return self.process.running()

    def _pg_up_problem(self) -> str | None:
        """Ready once its own /metrics says it reached PostgreSQL."""
        try:
            with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=3) as resp:
                text = resp.read().decode()
        except OSError as exc:
            return str(exc)
        return None if "\npg_up 1" in text else "pg_up is not 1 yet"
