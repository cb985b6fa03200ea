"""HAProxy (Debian's haproxy 2.6) in front of the replicas: config, `haproxy -c`, our own process
group, and each replica's state as HAProxy sees it over the stats socket.

Facts this relies on (measured here):
- `haproxy -f CFG -db` as root stays in the foreground as one process (14 MB), answers on its
  stats socket in 0.1 s and exits within a second of SIGTERM. On a host with systemd, apt
  starts Debian's own haproxy service; we never touch it (its default config binds nothing).
- The health check must send a Host header, or MLflow's host check refuses it.
- A replica's whole group SIGKILLed under 8 clients: DOWN after 0.8-1.3 s with
  inter 1000ms fall 2; only the requests in flight failed (a closed connection or a 502), and
  new connections to the dead replica were redispatched (`retry-on conn-failure`,
  `option redispatch`), so nothing is sent twice.
- `haproxy -c`'s useful line names file:line ("parsing [cfg:2] : ..."); the last only says
  "Fatal errors found in configuration".
- With cluster.tls the frontend is `bind ... ssl crt <pem>` (the pem holds certificate and key,
  0600, in <state_dir>/secrets/tls; only its path is in the config). A plain-HTTP client on that
  port gets its connection closed without an answer: nothing serves plain HTTP there, so nothing
  (a password in an Authorization header) is ever sent in clear to be redirected. The replicas
  behind it stay plain HTTP on cluster.host (loopback by default).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.libs.cluster.plan import ReplicaPlan, cluster_dir
from tasks.libs.core.errors import UserError
from tasks.libs.core.managed import Launch, Listener, ManagedProcess
from tasks.libs.core.processes import ProcessRecord
from tasks.libs.core.programs import require_program
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_until

BACKEND = "replicas"


@dataclass(frozen=True)
class FrontendTls:
    """The pem HAProxy serves, and its certificate's fingerprint (a renewed one restarts HAProxy)."""

    pem: Path
    fingerprint: str


@dataclass
class HaproxyRecord(ProcessRecord):
    port: int
    stats_port: int
    config_sha: str  # the config it runs: a different one means a restart


def render(settings: Settings, plans: list[ReplicaPlan], sock: Path, tls: FrontendTls | None = None) -> str:
    """The whole config; regenerated on every start."""
    lb = settings.cluster.lb
    fastinter = max(100, lb.check_interval_ms // 4)
    bind = f"    bind {lb.host}:{lb.port}"
    if tls:
        bind += f" ssl crt {tls.pem} alpn http/1.1"
    lines = [
        "# written by mlflow-ops cluster.up; regenerated on every start",
        *([f"# certificate sha256 {tls.fingerprint}"] if tls else []),
        "global",
        "    maxconn 2000",
        f"    stats socket {sock} mode 600 level admin",
        *(["    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets"] if tls else []),
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 120s",
        f"    timeout server {lb.timeout_server_s}s",
        f"    retries {lb.retries}",
        "    option redispatch 1",
        f"    retry-on {lb.retry_on}",
        "",
        "frontend mlflow",
        bind,
        *(["    http-request set-header X-Forwarded-Proto https"] if tls else []),
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        "    option httpchk",
        "    http-check send meth GET uri /health ver HTTP/1.1 hdr Host 127.0.0.1",
        "    http-check expect status 200",
        f"    default-server inter {lb.check_interval_ms}ms fastinter {fastinter}ms "
        f"downinter {lb.check_interval_ms}ms fall {lb.fall} rise {lb.rise}",
        *(f"    server {p.name} {p.host}:{p.port} check" for p in plans),
        "",
        "frontend stats",
        f"    bind 127.0.0.1:{lb.stats_port}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
    ]
    return "\n".join(lines) + "\n"


def check_config(path: Path) -> None:
    """`haproxy -c`: a one-line UserError naming what is wrong."""
    result = subprocess.run(
        [require_program("haproxy", "haproxy"), "-c", "-f", str(path)], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["?"]
        first = next((line for line in lines if "parsing [" in line), lines[-1])
        raise UserError(f"haproxy refused {path.name}: {first.split(' : ', 1)[-1].strip()}")


class Haproxy:
    """Our haproxy: <state_dir>/cluster/haproxy/{haproxy.cfg,haproxy.sock,haproxy.pid,haproxy.log}."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lb = settings.cluster.lb
        self.root = cluster_dir(settings) / "haproxy"
        self.cfg = self.root / "haproxy.cfg"
        self.sock = self.root / "haproxy.sock"
        self.process = ManagedProcess(
            "haproxy", pid_file=self.root / "haproxy.pid", log_file=self.root / "haproxy.log", record=HaproxyRecord
        )

    def ensure(self, plans: list[ReplicaPlan], tls: FrontendTls | None = None) -> str:
        """Run haproxy for these replicas: reuse one running this very config, else (re)start it."""
        text = render(self.settings, plans, self.sock, tls)
        sha = hashlib.sha256(text.encode()).hexdigest()[:16]
        current = self.running()
        if current and current.config_sha == sha:
            return f"haproxy already running on {self.lb.host}:{self.lb.port} (pid {current.pid}); reused"
        restarted = ""
        if current:
            self.stop()
            restarted = " (restarted for the new set of replicas)"
        binary = require_program("haproxy", "haproxy")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.cfg.write_text(text)
        check_config(self.cfg)
        self.sock.unlink(missing_ok=True)
        launch = Launch(
            command=[binary, "-f", str(self.cfg), "-db"],
            env={"PATH": os.environ.get("PATH", "")},
            cwd=self.root,
            ready=self._stats_problem,
            timeout=15,
            listeners=[
                Listener(self.lb.host, self.lb.port, "set cluster.lb.port"),
                Listener("127.0.0.1", self.lb.stats_port, "set cluster.lb.stats_port"),
            ],
            fields=dict(port=self.lb.port, stats_port=self.lb.stats_port, config_sha=sha),
        )
        self.process.start(launch)
        return f"haproxy started on {self.lb.host}:{self.lb.port}, stats on 127.0.0.1:{self.lb.stats_port}{restarted}"

    def stop(self) -> str:
        message = self.process.stop()
        self.sock.unlink(missing_ok=True)
        return message

    def running(self) -> HaproxyRecord | None:
        return self.process.running()

    def _stats_problem(self) -> str | None:
        """Ready once the stats socket answers `show stat`."""
        try:
            self.states()
            return None
        except OSError as exc:
            return f"stats socket: {exc.strerror or exc}"

    def command(self, line: str, timeout: float = 2.0) -> str:
        """One command on the admin socket, its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.sock))
            conn.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, dict[str, Any]]:
        """`show stat` per replica. status: UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (coming
        up), MAINT; lastchg_s: seconds since its last change of state."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        out = {}
        for row in rows:
            if row["pxname"] != BACKEND or row["svname"] in ("FRONTEND", "BACKEND"):
                continue
            out[row["svname"]] = {
                "status": row["status"],
                "check": row["check_status"],
                "lastchg_s": _int(row["lastchg"]),
                "sessions_now": _int(row["scur"]),
                "sessions_total": _int(row["stot"]),
                "http_5xx": _int(row["hrsp_5xx"]),
                "errors_connect": _int(row["econ"]),
                "errors_response": _int(row["eresp"]),
                "retries": _int(row["wretr"]),
                "redispatches": _int(row["wredis"]),
                "downtime_s": _int(row["downtime"]),
            }
        return out

    def wait_all_up(self, names: list[str], timeout: float) -> bool:
        def all_up() -> bool:
            try:
                states = self.states()
            except OSError:
                return False
            return all(states.get(name, {}).get("status") == "UP" for name in names)

        return wait_until(all_up, timeout=timeout, interval=0.2)

    def set_maintenance(self, name: str, on: bool) -> str:
        """Drain a replica before a planned stop (no request fails), and bring it back."""
        return self.command(f"{'disable' if on else 'enable'} server {BACKEND}/{name}").strip()


def _int(value: str | None) -> int:
    return int(value) if value else 0
