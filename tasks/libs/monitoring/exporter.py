"""Debian's prometheus-postgres-exporter as our own process: the series behind the PostgreSQL alerts.

It reads DATA_SOURCE_NAME from its environment (the password travels there, never argv) and
connects to the maintenance database `postgres`, so that its own session is not counted
against the MLflow database's connections. 13 MB RSS here.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass

from tasks.libs.core.errors import UserError
from tasks.libs.core.processes import ProcessRecord, port_holder, port_is_free, start_group, stop_group, tail
from tasks.libs.core.programs import require_program
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_ready
from tasks.libs.postgres.connection import libpq_params, libpq_url


@dataclass
class ExporterRecord(ProcessRecord):
    port: int


class PostgresExporter:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = settings.monitoring.postgres_exporter.port
        self.root = settings.state_path / "monitoring"
        self.pid_file = self.root / "postgres_exporter.pid"
        self.log_file = self.root / "postgres_exporter.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        current = self.running()
        if current:
            return f"postgres_exporter already running on {self.target} (pid {current.pid}); reused"
        binary = require_program("prometheus-postgres-exporter", "prometheus-postgres-exporter")
        if not port_is_free("127.0.0.1", self.port):
            raise UserError(
                f"port {self.port} is in use by {port_holder(self.port)}; stop that or set monitoring.postgres_exporter.port"
            )
        # lib/pq requires TLS unless told otherwise (libpq only prefers it); its URL form, as the
        # exporter's own DSN parsing splits a key=value DSN on every space
        dsn = libpq_url({"sslmode": "disable", **libpq_params(self.settings, dbname="postgres")})
        env = {"PATH": os.environ.get("PATH", ""), "DATA_SOURCE_NAME": dsn}
        proc = start_group(
            [binary, f"--web.listen-address={self.target}", "--log.level=warn"],
            env=env,
            log_path=self.log_file,
            cwd=self.root,
        )
        record = ExporterRecord.of(proc.pid, port=self.port)
        record.write(self.pid_file)

        def probe() -> str | None:
            if proc.poll() is not None:
                raise UserError(f"postgres_exporter exited at start:\n{tail(self.log_file, 5)}")
            try:
                with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=3) as resp:
                    text = resp.read().decode()
            except OSError as exc:
                return str(exc)
            return None if "\npg_up 1" in text else "pg_up is not 1 yet"

        try:
            wait_ready(probe, timeout=30, what="postgres_exporter")
        except UserError:
            stop_group(record.pgid, grace=5)
            self.pid_file.unlink(missing_ok=True)
            raise
        return f"postgres_exporter started on {self.target}"

    def stop(self) -> str:
        record = ExporterRecord.live(self.pid_file)
        if record is None:
            return "postgres_exporter is not running"
        how = stop_group(record.pgid, grace=5)
        self.pid_file.unlink(missing_ok=True)
        return f"postgres_exporter stopped (pid {record.pid}, {how})"

    def running(self) -> ExporterRecord | None:
        return ExporterRecord.live(self.pid_file)
