"""TLS: no plain HTTP around a deployment that is meant to be HTTPS, and a certificate a client can trust.

plain HTTP   A plain `GET /health` to the URL's own port, and (on our own deployment) to every
             socket beyond loopback of the processes serving it: the server (and split mode's
             artifacts server), or HAProxy and each replica of a cluster. An HTTP answer with
             content (not a redirect to https, not a 4xx refusal) is plain HTTP that other machines
             can reach while TLS is configured: FAIL. Loopback sockets are not reachable from other
             machines and are only counted (the replicas behind HAProxy).
certificate  The certificate the URL serves, read without verifying (to say what is wrong) and then
             verified as a client verifies it (the CA, host name, dates): expired, not yet valid,
             made for another host, or not signed by the CA a client trusts: FAIL.

Both open their own connections (one or a few, never a scan) and need no answer from MLflow.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from tasks.libs.core.certificates import cert_names, covers, date_problem
from tasks.libs.core.processes import group_members
from tasks.libs.reporting.records import CheckFailed, CheckSkipped
from tasks.libs.security.probes_exposure import listening_addresses
from tasks.libs.security.target import Target, is_loopback

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _url_address(target: Target) -> tuple[str, int, str]:
    parts = urlsplit(target.url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default, parts.scheme


def plain_answer(host: str, port: int, timeout: float, netloc: str | None = None) -> str | None:
    """What a plain-HTTP GET /health gets at host:port: None when no HTTP answer comes (refused,
    closed, reset, a TLS alert), "redirect"/"refused" for a 3xx to https or a 4xx, else the status line."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(
                f"GET /health HTTP/1.1\r\nHost: {netloc or f'{host}:{port}'}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while len(data) < 4096 and b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    head = data.decode("latin-1").split("\r\n\r\n")[0].split("\r\n")
    if not head[0].startswith("HTTP/"):
        return None
    status = head[0].split(" ", 2)[1] if len(head[0].split(" ")) > 1 else ""
    location = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("location:")), "")
    if status.startswith("3") and location.startswith("https://"):
        return "redirect"
    if status.startswith("4"):
        return "refused"
    return head[0].strip()


def check_plain_http(target: Target) -> str:
    host, port, scheme = _url_address(target)
    if scheme != "https" and not target.tls_configured:
        raise CheckSkipped("TLS is not configured here (an http:// URL; server.tls and cluster.tls off)")
    bad, said = [], []
    answer = plain_answer(host, port, target.timeout, urlsplit(target.url).netloc)
    if answer not in (None, "redirect", "refused"):
        bad.append(f"plain HTTP on the URL's own port {port} answers {answer!r}")
    else:
        said.append(f"plain HTTP on port {port} gets {'no HTTP answer' if answer is None else answer}")
    beyond = loopback = 0
    for name, pgid in target.behind:
        for ip, listen_port in listening_addresses(group_members(pgid)):
            if is_loopback(ip.split("%")[0]):
                loopback += 1
                continue
            beyond += 1
            got = plain_answer(WILDCARDS.get(ip, ip), listen_port, target.timeout)
            if got not in (None, "redirect", "refused"):
                bad.append(
                    f"{name} answers plain HTTP ({got!r}) on {ip}:{listen_port}, reachable beyond loopback"
                    " while TLS is configured"
                )
    if bad:
        raise CheckFailed("; ".join(bad))
    if target.behind:
        said.append(
            f"{beyond} socket(s) of ours beyond loopback speak only TLS"
            + (f"; {loopback} on loopback only (not reachable from other machines)" if loopback else "")
        )
    else:
        said.append("the processes behind it are not ours to look at")
    return "; ".join(said)


def served_certificate(host: str, port: int, timeout: float) -> x509.Certificate:
    """The certificate host:port presents, read without verifying it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise CheckFailed(f"no TLS handshake with {host}:{port} ({type(exc).__name__}: {exc})") from None
    if not der:
        raise CheckFailed(f"{host}:{port} presented no certificate")
    return x509.load_der_x509_certificate(der)


def verify_message(host: str, port: int, ca: str | None, timeout: float) -> str | None:
    """Why a client trusting ca (None: the system's store) refuses the certificate, or None."""
    context = ssl.create_default_context(cafile=ca)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"


def check_certificate(target: Target) -> str:
    host, port, scheme = _url_address(target)
    if scheme != "https":
        raise CheckSkipped("an http:// URL: no certificate to check")
    cert = served_certificate(host, port, target.timeout)
    names = ", ".join(cert_names(cert)) or "no name"
    problems = []
    when = date_problem(cert)
    if when:
        problems.append(when)
    if not covers(cert, host):
        problems.append(f"made for {names}, not {host}")
    refused = verify_message(host, port, target.ca_file, target.timeout)
    trust = target.ca_file or "the system's trust store"
    if refused and not problems:
        problems.append(f"not accepted by a client trusting {trust}: {refused}")
    if problems:
        raise CheckFailed(f"the certificate served at {host}:{port} is " + "; ".join(problems))
    common = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(common[0].value) if common else cert.issuer.rfc4514_string()
    left = (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days
    return (
        f"for {names}, issued by {issuer}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d} ({left} days left), verified with {trust}"
    )
