"""A check's failure in one line: what the client's exception means (a dead server, a refused
certificate, a database error relayed by the server), and the /health probes that tell a
server that is down from one that could not do what was asked."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import requests

from tasks.libs.core.tls import CERT_PATH_ENV
from tasks.libs.reporting.records import CheckFailed


def describe_error(exc: BaseException, url: str) -> str:
    """One line for an exception from the client: what went wrong, without a wall of retries."""
    text = f"{type(exc).__name__}: {exc}" if not _is_mlflow_error(exc) else str(exc)
    # SQLAlchemy errors relayed by the server carry the whole statement; the cause is before it.
    text = re.sub(r"\s*\[SQL:.*", "", text, flags=re.DOTALL)
    text = re.sub(r"\s*\(Background on this error at:.*", "", text, flags=re.DOTALL)
    low = text.lower()
    if "certificate verify failed" in low or "sslcertverificationerror" in low:
        why = re.search(r"certificate verify failed: ([^(\)'\"]+)", text)
        return (
            f"the certificate of {url} was not accepted ({why.group(1).strip() if why else 'verify failed'}); "
            f"give the CA that signed it (--ca FILE or {CERT_PATH_ENV})"
        )
    if "wrong version number" in low or "record layer failure" in low:
        return f"TLS to {url} failed: the server speaks plain HTTP there (use http://) or another protocol"
    if "sqlalchemy" in low or re.search(r"\((sqlite3|psycopg2?)[.\w]*\)", text):
        return f"the server's database failed: {text.split(': ', 1)[-1] if text.startswith(('BAD_REQUEST', 'INTERNAL_ERROR')) else text}"
    if "connection refused" in low or "failed to establish a new connection" in low:
        return f"no server answers at {url} (connection refused)"
    if "read timed out" in low or "timed out" in low:
        return f"the server at {url} did not answer in time ({text.splitlines()[0][:160]})"
    if "connection aborted" in low or "remotedisconnected" in low or "connection reset" in low:
        return f"the server at {url} dropped the connection mid-request"
    status = re.search(r"too many (\d{3}) error responses", text)
    if status:
        endpoint = re.search(r"API request to (\S+) failed", text)
        path = urlsplit(endpoint.group(1)).path if endpoint else "a request"
        return f"the server answered HTTP {status.group(1)} to {path}"
    first = " ".join(text.split())
    return first if len(first) <= 400 else first[:397] + "..."


def _is_mlflow_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("mlflow")


def probe_health(url: str, timeout: float = 5.0) -> None:
    """Raise CheckFailed unless GET /health answers 200 (a fast, clear answer for a dead server)."""
    try:
        response = requests.get(f"{url}/health", timeout=timeout, verify=tls_verify())
    except requests.ConnectionError as exc:
        raise CheckFailed(describe_error(exc, url)) from None
    except requests.Timeout:
        raise CheckFailed(f"the server at {url} did not answer /health within {timeout:g} s") from None
    if response.status_code != 200:
        raise CheckFailed(f"{url}/health answered HTTP {response.status_code}: {response.text[:120]!r}")


def server_is_up(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=5, verify=tls_verify()).status_code == 200
    except requests.RequestException:
        return False


def tls_verify() -> str | bool:
    """requests' verify for the server under check: the CA the run set (client_environment), or the
    system's trust store; never off."""
    return os.environ.get(CERT_PATH_ENV) or True


def upload_failure(what: str, exc: Exception, url: str) -> CheckFailed:
    """Why an artifact upload failed; a server that still answers /health could not store it."""
    reason = f"{what} failed: {describe_error(exc, url)}"
    # A server that cannot write answers 500, or resets the connection before reading a larger body.
    refused = re.search(r"HTTP 5\d\d to /api/2.0/mlflow-artifacts/", reason) or "dropped the connection" in reason
    if refused and server_is_up(url):
        reason += (
            "; the server is still up, so it could not store the file: check that its artifact destination "
            "exists and is writable (the server log has the details)"
        )
    return CheckFailed(reason)
