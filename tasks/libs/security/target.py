"""What the security probes are pointed at: the URL, what we may do there, what we know locally.

A server is *owned* when it is the configured server and our pid file names a live process of
ours: then writes are allowed without --allow-writes, canaries may be planted next to its
artifact root, and its processes and state files are looked at. Any other URL is probed
read-only from the outside (writes only with --allow-writes), a few requests a probe.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import os
import secrets as _secrets
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tasks.libs.cluster.haproxy import Haproxy
from tasks.libs.cluster.plan import lb_url, recorded_replicas
from tasks.libs.cluster.replicas import replica_process
from tasks.libs.core.credentials import known_secrets, stored_secret
from tasks.libs.core.errors import UserError
from tasks.libs.core.redact import redact
from tasks.libs.core.settings import PROJECT_ROOT, Settings
from tasks.libs.core.tls import CERT_PATH_ENV, client_ca, cluster_tls
from tasks.libs.reporting.records import CheckFailed, CheckSkipped
from tasks.libs.security.http import Answer, raw_request
from tasks.libs.server.command import allowed_hosts
from tasks.libs.server.control import ServerPaths, running_record
from tasks.libs.server.sidecars import ArtifactsServer

KNOWN_FIXED = PROJECT_ROOT / "data" / "security" / "mlflow_known_fixed.yaml"
NAME_PREFIX = "mlflow-ops-sec"


class Unreachable(CheckFailed):
    """The server did not answer (refused, reset, timed out): no verdict on it is possible."""


class OverBudget(CheckFailed):
    """A probe wanted more requests or more time than it is allowed."""


@dataclass
class PgLocal:
    """The configured PostgreSQL, as far as this machine can see it."""

    settings: Settings  # for tasks.libs.postgres.connection.connect
    host: str  # postgres.host: where config says it listens
    provider: str
    postmaster_pid: int | None = None  # local provider only
    data_dir: Path | None = None
    cluster_root: Path | None = None
    log_file: Path | None = None


@dataclass
class Local:
    """A deployment on this machine laid out by this tool (the configured one)."""

    backend: str
    state_dir: Path
    artifact_root: Path | None  # None: the artifacts live in a bucket (artifacts.store s3)
    scratch_dir: Path  # where canaries go: in the state dir, outside the artifact root
    bind_host: str  # server.host
    allowed_hosts: list[str]  # what we pass as --allowed-hosts
    server_pid: int | None = None  # None: no server of ours runs
    server_pgid: int | None = None
    sqlite_file: Path | None = None
    logs: list[Path] = field(default_factory=list)
    report_roots: list[Path] = field(default_factory=list)
    pg: PgLocal | None = None


@dataclass
class Target:
    url: str  # scheme://host:port[/prefix], no trailing slash
    owned: bool = False
    allow_writes: bool = False
    credentials: tuple[str, str] | None = None  # who we sign in as (basic auth)
    secrets: tuple[str, ...] = ()  # never shown; the secrets probe looks for them
    timeout: float = 10.0  # seconds per request
    probe_timeout: float = 60.0  # seconds per probe
    budget: int = 40  # requests per probe
    known_fixed: Path = KNOWN_FIXED
    local: Local | None = None
    notes: list[str] = field(default_factory=list)  # how the target was judged, for the report
    server_version: str | None = None  # what GET /version said
    requests_sent: int = 0  # by every probe so far
    answered: bool = False  # the server answered at least one request
    ca_file: str | None = None  # what an https URL's certificate is verified with (None: the system store)
    tls_configured: bool = False  # our config says this URL serves TLS (server.tls / cluster.tls)
    behind: list[tuple[str, int]] = field(default_factory=list)  # (name, pgid) of our processes serving the URL

    @property
    def can_write(self) -> bool:
        return self.owned or self.allow_writes

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def url_is_loopback(self) -> bool:
        return is_loopback(self.host)


def target_from_settings(
    settings: Settings,
    *,
    url: str | None = None,
    allow_writes: bool = False,
    report_roots: tuple[Path, ...] = (),
    ca: str | None = None,
) -> Target:
    """The target for `inv test.security`: the configured server unless url names another.

    ca: the CA an https URL is verified with; default the tool's own for its own server or load
    balancer, else MLFLOW_TRACKING_SERVER_CERT_PATH (as MLflow's client), else the system's store.
    """
    cfg = settings.security
    configured = settings.server.url
    wanted = (url or configured).rstrip("/")
    parts = urlsplit(wanted)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{redact(wanted)!r} is not an http(s) URL; give --url http://host:port")
    if parts.username or parts.password:  # argv is readable by every local user
        raise UserError(
            "the URL carries credentials; drop them and set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        )
    target = Target(
        url=wanted,
        allow_writes=allow_writes,
        timeout=cfg.request_timeout,
        probe_timeout=cfg.probe_timeout,
        budget=cfg.request_budget,
        known_fixed=Path(cfg.known_fixed) if cfg.known_fixed else KNOWN_FIXED,
        ca_file=ca or os.environ.get(CERT_PATH_ENV) or None,
    )
    if not same_server(wanted, configured):
        target.credentials = credentials_from_env()
        target.secrets = tuple(s for s in [target.credentials[1] if target.credentials else None] if s)
        if same_server(wanted, lb_url(settings)):
            cluster_knowledge(settings, target, ca)
        else:
            target.notes.append(f"not the configured server ({configured}): probed from the outside")
        return target
    record = running_record(settings)
    if record and record.backend != settings.backend:  # e.g. started with --backend, or fell back to SQLite
        target.notes.append(f"our server runs on {record.backend}: its store and database are the ones looked at")
        settings = settings.model_copy(update={"backend": record.backend})
    target.local = local_knowledge(settings, report_roots)
    target.owned = target.local.server_pid is not None
    target.tls_configured = settings.server.tls.enabled
    target.ca_file = ca or (str(client_ca(settings)) if client_ca(settings) else target.ca_file)
    if target.local.server_pgid is not None:
        target.behind.append(("the server", target.local.server_pgid))
    artifacts_server = ArtifactsServer(settings).running()
    if artifacts_server:
        target.behind.append(("the artifacts server", artifacts_server.pgid))
    if not target.owned:
        target.notes.append("no server of ours runs at the configured URL: probed as someone else's")
    if settings.server.auth.enabled:
        password = (
            settings.server.auth.admin_password.get_secret_value()
            if settings.server.auth.admin_password is not None
            else stored_secret(settings, "admin_password", generate=False)
        )
        target.credentials = (settings.server.auth.admin_user, password) if password else None
    else:
        target.credentials = credentials_from_env()
    extra = [target.credentials[1]] if target.credentials else []
    target.secrets = tuple(dict.fromkeys([*known_secrets(settings), *extra]))
    return target


def cluster_knowledge(settings: Settings, target: Target, ca: str | None) -> None:
    """The URL is our cluster's load balancer: HAProxy and the replicas are the processes behind it."""
    target.notes.append(
        "the cluster's load balancer (cluster.up): probed from the outside, its processes' sockets looked at"
    )
    target.tls_configured = cluster_tls(settings)
    target.ca_file = ca or (str(client_ca(settings)) if client_ca(settings) else target.ca_file)
    balancer = Haproxy(settings).running()
    if balancer:
        target.behind.append(("HAProxy", balancer.pgid))
    for plan in recorded_replicas(settings):
        record = replica_process(settings, plan).running()
        if record:
            target.behind.append((f"replica {plan.name}", record.pgid))


def local_knowledge(settings: Settings, report_roots: tuple[Path, ...] = ()) -> Local:
    state = settings.state_path
    paths = ServerPaths.of(settings)
    record = running_record(settings)
    local = Local(
        backend=settings.backend,
        state_dir=state,
        artifact_root=settings.artifacts_dir if settings.artifacts.store == "local" else None,
        scratch_dir=state / f"security-probe-{_secrets.token_hex(3)}",
        bind_host=settings.server.host,
        allowed_hosts=allowed_hosts(settings).split(","),
        server_pid=record.pid if record else None,
        server_pgid=record.pgid if record else None,
        sqlite_file=settings.sqlite_file if settings.backend == "sqlite" else None,
        logs=[paths.log_file],
        report_roots=[state / "reports", PROJECT_ROOT / "benchmarks" / "results", *report_roots],
    )
    if settings.backend == "postgres":
        local.pg = postgres_knowledge(settings)
        if local.pg.log_file:
            local.logs.append(local.pg.log_file)
    return local


def postgres_knowledge(settings: Settings) -> PgLocal:
    from tasks.libs.postgres.local import LocalPostgres
    from tasks.libs.postgres.providers import provider_for

    pg = PgLocal(settings=settings, host=settings.postgres.host, provider=settings.postgres.provider)
    try:
        provider = provider_for(settings)
    except UserError:
        return pg
    pg.provider = provider.name
    if isinstance(provider, LocalPostgres):
        pg.postmaster_pid = provider.postmaster_pid()
        pg.data_dir, pg.cluster_root, pg.log_file = provider.data_dir, provider.root, provider.log_file
    return pg


def credentials_from_env() -> tuple[str, str] | None:
    """MLflow's own client variables: who to sign in as on a server that is not ours."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def same_server(url: str, configured: str) -> bool:
    """url names the configured server (localhost, 127.0.0.1 and ::1 count as one host)."""
    a, b = urlsplit(url), urlsplit(configured)
    if (a.scheme, a.port, a.path.rstrip("/")) != (b.scheme, b.port, b.path.rstrip("/")):
        return False
    return a.hostname == b.hostname or (is_loopback(a.hostname or "") and is_loopback(b.hostname or ""))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def probe_name() -> str:
    """A name for what a write probe creates: unique, recognisable, easy to clean up."""
    return f"{NAME_PREFIX}-{_secrets.token_hex(4)}"


class Session:
    """One probe's requests: counted against the budget, within the probe's time, signed in on demand."""

    def __init__(self, target: Target):
        self.target = target
        self.sent = 0
        self.budget = target.budget
        self.deadline = time.monotonic() + target.probe_timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        auth: bool | tuple[str, str] = False,
        headers: Mapping[str, str | None] | None = None,
        body: bytes | str | dict | None = None,
    ) -> Answer:
        """auth=True signs in with the target's credentials (if any), a tuple with those."""
        left = self.deadline - time.monotonic()
        if self.sent >= self.budget:
            raise OverBudget(f"probe bug: more than {self.budget} requests (security.request_budget)")
        if left <= 0:
            raise OverBudget(
                f"did not finish within {self.target.probe_timeout:g} s ({self.sent} requests sent; security.probe_timeout)"
            )
        self.sent += 1
        self.target.requests_sent += 1
        wanted = dict(headers or {})
        creds = self.target.credentials if auth is True else (auth or None)
        if creds:
            wanted["Authorization"] = basic(*creds)
        timeout = min(self.target.timeout, left)
        try:
            answer = raw_request(
                self.target.url, method, path, headers=wanted, body=body, timeout=timeout, ca=self.target.ca_file
            )
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(describe_unreachable(exc, self.target.url, timeout)) from None
        self.target.answered = True
        return answer

    def get(self, path: str, **kw) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: dict, **kw) -> Answer:
        return self.request("POST", path, body=body, **kw)

    def needs_auth(self, answer: Answer, what: str) -> None:
        """SKIPPED when the server wants sign-in that we cannot give."""
        if answer.status == 401 and not self.target.credentials:
            raise CheckSkipped(f"{what} needs sign-in and we hold no credentials (HTTP 401)")

    @contextlib.contextmanager
    def cleanup(self, extra: int = 10) -> Iterator[None]:
        """Room to delete what the probe made, even when it ran out of requests or time."""
        self.budget += extra
        self.deadline = max(self.deadline, time.monotonic() + 3 * self.target.timeout)
        yield


def describe_unreachable(exc: BaseException, url: str, timeout: float) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the certificate of {url} was not accepted ({exc.verify_message}); the certificate probe says why"
    if isinstance(exc, ConnectionRefusedError):
        return f"no server answers at {url} (connection refused)"
    if isinstance(exc, TimeoutError):
        return f"the server at {url} did not answer within {timeout:g} s"
    if isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected)):
        return f"the server at {url} dropped the connection mid-request"
    return f"no answer from {url} ({type(exc).__name__}: {exc})"
