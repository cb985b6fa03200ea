"""Run the security probes in order, one result each; a probe's failure never stops the next.

run_security(target) returns a SuiteReport (tasks.libs.reporting.records) that the shared
writers (tasks.libs.reporting.writers) turn into a terminal table, Markdown, JSON and JUnit.
Every reason is redacted with the target's secrets before it is kept.
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasks.libs.core.errors import UserError
from tasks.libs.core.redact import redact
from tasks.libs.reporting.records import FAIL, PASS, SKIPPED, CheckFailed, CheckResult, CheckSkipped, SuiteReport
from tasks.libs.security import probes_access as access
from tasks.libs.security import probes_artifacts as artifacts
from tasks.libs.security import probes_exposure as exposure
from tasks.libs.security import probes_tls as tls
from tasks.libs.security import probes_workspaces as workspaces
from tasks.libs.security.target import Target, Unreachable
from tasks.libs.security.versions import check_version


@dataclass
class Probe:
    name: str
    run: Callable[[Target], str]  # the PASS reason; raises CheckFailed / CheckSkipped
    proves: str  # one line: what a PASS proves (docs/security.md has the long form)
    http: bool = True  # talks to the server (SKIPPED when it does not answer at all)
    writes: bool = False  # creates something: a server we own, or --allow-writes


def all_probes() -> list[Probe]:
    def auth_required(target: Target) -> str:
        addresses = exposure.server_addresses(target.local)
        return access.check_auth_required(target, beyond_loopback=access.exposed_beyond_loopback(addresses))

    return [
        Probe("version", check_version, "MLflow is past every fixed release in the known-fixed data"),
        Probe(
            "artifact traversal (read)",
            artifacts.check_traversal_read,
            "proxied, run and model-version artifact reads refuse .., %2e%2e, %252e, absolute and file:// paths",
        ),
        Probe(
            "artifact traversal (write)",
            artifacts.check_traversal_write,
            "uploads and deletes with traversal are refused; nothing outside the root changes on disk",
            writes=True,
        ),
        Probe(
            "artifact locations",
            artifacts.check_artifact_locations,
            "no experiment keeps its artifacts in a server-local path outside the artifact root",
        ),
        Probe(
            "model version source",
            artifacts.check_model_version_source,
            "local, file://, .. and host sources and past artifact_location exploits are refused",
            writes=True,
        ),
        Probe(
            "symlink escape",
            artifacts.check_symlink_escape,
            "no symlink in the artifact root leads outside it",
            http=False,
        ),
        Probe("host header", access.check_host_header, "a foreign Host gets 403; the allowed hosts are config's"),
        Probe("cors", access.check_cors, "a cross-origin write from an unlisted Origin is blocked"),
        Probe("auth required", auth_required, "beyond loopback, writes without credentials are refused"),
        Probe(
            "default password",
            access.check_default_password,
            "admin (and our admin) cannot sign in with password1234 or password",
        ),
        Probe(
            "permissions",
            access.check_permissions,
            "a user denied on another user's experiment cannot read it",
            writes=True,
        ),
        Probe(
            "listen addresses",
            exposure.check_listen_addresses,
            "the server and PostgreSQL listen where config says",
            http=False,
        ),
        Probe("pg_hba", exposure.check_pg_hba, "no trust line for TCP clients in pg_hba.conf", http=False),
        Probe(
            "file modes",
            exposure.check_file_modes,
            "state dir, secrets, store, logs are closed to other users",
            http=False,
        ),
        Probe(
            "secrets",
            exposure.check_secrets,
            "no configured secret in the logs, the processes' arguments or the reports",
            http=False,
        ),
        Probe(
            "plain HTTP",
            tls.check_plain_http,
            "with TLS configured, nothing answers plain HTTP beyond loopback (the URL's port, our sockets)",
            http=False,
        ),
        Probe(
            "certificate",
            tls.check_certificate,
            "the served certificate is in date, covers the URL's host and chains to the CA clients trust",
            http=False,
        ),
        Probe(
            "workspace isolation",
            workspaces.check_workspace_isolation,
            "a user of one workspace can neither read nor write another workspace, nor 'default'",
            writes=True,
        ),
    ]


def run_security(
    target: Target,
    *,
    probes: list[Probe] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    report_dir: Path | None = None,
) -> SuiteReport:
    """Every probe against target; never raises for the server's fault (a UserError for ours)."""
    report = SuiteReport(
        suite="security",
        title="MLflow security probes",
        tracking_uri=redact(target.url),
        started_at=_now(),
        report_dir=report_dir,
    )
    unreachable: str | None = None
    for number, probe in enumerate(probes or all_probes(), start=1):
        start, sent_before = time.perf_counter(), target.requests_sent
        details: dict = {"proves": probe.proves}
        if probe.http and unreachable:
            status, reason = SKIPPED, f"needs a server that answers: {unreachable}"
        else:
            status, reason = _run(probe, target, details)
            if status == FAIL and details.pop("unreachable", False) and not target.answered:
                unreachable = reason  # it never answered at all: the other HTTP probes cannot run
        details["requests"] = target.requests_sent - sent_before
        result = CheckResult(
            number, probe.name, status, redact(reason, target.secrets), time.perf_counter() - start, details=details
        )
        report.checks.append(result)
        if on_result:
            on_result(result)
    report.finished_at = _now()
    report.facts = facts(target, report)
    return report


def _run(probe: Probe, target: Target, details: dict) -> tuple[str, str]:
    try:
        return PASS, probe.run(target)
    except CheckSkipped as exc:
        return SKIPPED, str(exc)
    except Unreachable as exc:
        details["unreachable"] = True
        return FAIL, str(exc)
    except CheckFailed as exc:
        return FAIL, str(exc)
    except UserError:
        raise  # ours to fix (a broken known-fixed file): stop with its one line
    except Exception as exc:  # our bug or a very odd answer: a FAIL that keeps the trace
        details["traceback"] = redact(traceback.format_exc(limit=6), target.secrets)
        return FAIL, f"{type(exc).__name__}: {exc}"


def facts(target: Target, report: SuiteReport) -> dict[str, str]:
    local = target.local
    owned = f"yes (pid {local.server_pid})" if target.owned and local else "no"
    return {
        "MLflow version": target.server_version or "unknown",
        "Started by this tool": owned,
        "Writes": "allowed" + (" (our server)" if target.owned else " (--allow-writes)")
        if target.can_write
        else "not allowed",
        "Signed in as": target.credentials[0] if target.credentials else "nobody",
        "Requests sent": str(target.requests_sent),
        **({"Note": "; ".join(target.notes)} if target.notes else {}),
        "What each probe proves": "docs/security.md",
    }


def verdict(report: SuiteReport) -> str:
    return ", ".join(f"{c.name} ({c.reason})" for c in report.checks if c.status == FAIL)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
