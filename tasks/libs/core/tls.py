"""TLS material: a private CA and a server certificate of our own making, or the files config names.

With server.tls.cert_file and key_file null, <state_dir>/secrets/tls/ (0700) holds

    ca.crt  ca.key        the private CA: ECDSA P-256, CA_DAYS (10 years); made once, kept while valid
    server.crt server.key the server's certificate signed by it: SERVER_DAYS (397, the longest a
                          public CA may issue), for required_names(); re-made at start when missing,
                          within RENEW_DAYS of its end, no longer covering those names, or not
                          signed by the current CA
    haproxy.pem           server.crt + server.key in one file, what HAProxy's `crt` takes (cluster)

Keys (and haproxy.pem) are 0600, certificates 0644 behind the 0700 folder. Clients trust
ca.crt (MLflow's client through MLFLOW_TRACKING_SERVER_CERT_PATH); a new server certificate
from the same CA needs nothing new on the clients. Only paths ever reach argv or a log.

With cert_file and key_file given, they are checked (readable, the key unencrypted and matching,
in date, covering the host of server.url, which our own probes connect to) and used as they are;
ca_file (or the system's trust store) verifies them.

The X.509 work itself (making, writing, reading and judging certificates) is in certificates.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tasks.libs.core.certificates import (
    Key,
    cert_names,
    cert_pem,
    covers,
    date_problem,
    describe,
    issue,
    key_pem,
    load_cert,
    make_ca,
    signed_by,
    utc_now,
    write_file,
)
from tasks.libs.core.errors import ConfigError
from tasks.libs.core.settings import Settings
from tasks.libs.core.state import ensure_state_dir

RENEW_DAYS = 30
CERT_PATH_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"  # MLflow's client: the CA bundle it verifies with
WILDCARD_BINDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None  # what clients verify cert with: our CA, server.tls.ca_file, or None (system store)
    generated: bool


def tls_dir(settings: Settings) -> Path:
    return settings.state_path / "secrets" / "tls"


def tls_files(settings: Settings) -> TlsFiles:
    """Where the certificate, key and CA are (nothing is made)."""
    cfg = settings.server.tls
    if cfg.cert_file and cfg.key_file:
        return TlsFiles(Path(cfg.cert_file), Path(cfg.key_file), Path(cfg.ca_file) if cfg.ca_file else None, False)
    folder = tls_dir(settings)
    return TlsFiles(folder / "server.crt", folder / "server.key", folder / "ca.crt", True)


def cluster_tls(settings: Settings) -> bool:
    """Whether HAProxy terminates TLS: cluster.tls, or server.tls.enabled when that is null."""
    chosen = settings.cluster.tls
    return settings.server.tls.enabled if chosen is None else chosen


def client_ca(settings: Settings) -> Path | None:
    """The CA file a client of our server (or load balancer) trusts; None when TLS is off or the
    certificate is publicly trusted (system store)."""
    if not (settings.server.tls.enabled or cluster_tls(settings)):
        return None
    return tls_files(settings).ca


def tls_client_env(settings: Settings) -> dict[str, str]:
    """What an MLflow client needs to trust our server's certificate."""
    ca = client_ca(settings)
    return {CERT_PATH_ENV: str(ca)} if ca else {}


def uvicorn_tls_opts(settings: Settings) -> list[str]:
    """uvicorn's TLS options: the certificate and key paths (never the key's content)."""
    files = tls_files(settings)
    return ["--ssl-certfile", str(files.cert), "--ssl-keyfile", str(files.key)]


def required_names(settings: Settings) -> list[str]:
    """The names and addresses the server certificate must cover."""
    names = ["localhost", "127.0.0.1", "::1"]
    binds = [settings.server.host, settings.cluster.lb.host]
    names += [h for h in binds if h not in WILDCARD_BINDS]
    if any(h in WILDCARD_BINDS for h in binds):
        names.append(socket.gethostname())
    if settings.deploy.public_host:
        names.append(settings.deploy.public_host)
    for entry in settings.server.allowed_hosts or []:
        host = _strip_port(entry)
        if host and "*" not in host:
            names.append(host)
    return list(dict.fromkeys(n.lower() for n in names if n))


def _strip_port(entry: str) -> str:
    if entry.startswith("["):
        return entry[1:].partition("]")[0]
    if entry.count(":") == 1:
        return entry.partition(":")[0]
    return entry


# --- what server.start and cluster.up call --------------------------------------------------


def ensure_tls(settings: Settings) -> tuple[TlsFiles, list[str]]:
    """The certificate and key to serve, made or renewed when needed; notes on what was done."""
    files = tls_files(settings)
    if not files.generated:
        check_given(settings, files)
        return files, []
    ensure_state_dir(settings)
    folder = tls_dir(settings)
    folder.parent.mkdir(exist_ok=True, mode=0o700)
    folder.mkdir(exist_ok=True, mode=0o700)
    notes: list[str] = []
    with _locked(folder / ".lock"):
        ca, ca_key = _ensure_ca(settings, folder, notes)
        names = required_names(settings)
        why = _server_cert_problem(files, ca, names)
        if why:
            cert, key = issue(ca, ca_key, names)
            write_file(files.key, key_pem(key), 0o600)
            write_file(files.cert, cert_pem(cert), 0o644)
            notes.append(f"made a server certificate {describe(cert)} ({why})")
    return files, notes


def _ensure_ca(settings: Settings, folder: Path, notes: list[str]) -> tuple[x509.Certificate, Key]:
    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    why = "none yet"
    if cert_path.exists() and key_path.exists():
        try:
            ca = load_cert(cert_path)
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            left = ca.not_valid_after_utc - utc_now()
            if isinstance(key, ec.EllipticCurvePrivateKey) and left > dt.timedelta(days=RENEW_DAYS):
                return ca, key
            why = "it ends within 30 days" if left > dt.timedelta(0) else "it expired"
        except (ValueError, TypeError):
            why = "the old one was unreadable"
    where = hashlib.sha256(str(settings.state_path).encode()).hexdigest()[:8]  # one CA per state dir
    ca, key = make_ca(f"mlflow-ops private CA {where} {socket.gethostname()}"[:64])
    write_file(key_path, key_pem(key), 0o600)
    write_file(cert_path, cert_pem(ca), 0o644)
    notes.append(
        f"made a private CA {cert_path}, valid until {ca.not_valid_after_utc:%Y-%m-%d} ({why}); "
        "clients that trusted an earlier one need this file"
    )
    return ca, key


def _server_cert_problem(files: TlsFiles, ca: x509.Certificate, names: list[str]) -> str | None:
    if not (files.cert.exists() and files.key.exists()):
        return "none yet"
    try:
        cert = load_cert(files.cert)
    except ValueError:
        return "the old one was unreadable"
    if not signed_by(cert, ca):
        return "the old one was signed by another CA"
    if cert.not_valid_after_utc - utc_now() < dt.timedelta(days=RENEW_DAYS):
        return "the old one ends within 30 days" if not date_problem(cert) else "the old one expired"
    missing = [n for n in names if not covers(cert, n)]
    if missing:
        return f"the old one did not cover {', '.join(missing)}"
    return None


def check_given(settings: Settings, files: TlsFiles) -> None:
    """A certificate and key from config: usable by uvicorn and HAProxy, and by our own probes."""
    where = "server.tls.cert_file"
    try:
        cert = load_cert(files.cert)
    except OSError as exc:
        raise ConfigError(f"{where} {files.cert}: {exc.strerror}; fix the path") from None
    except ValueError:
        raise ConfigError(f"{where} {files.cert} holds no PEM certificate; give the certificate in PEM") from None
    try:
        raw = files.key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"server.tls.key_file {files.key}: {exc.strerror}; fix the path") from None
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise ConfigError(
            f"server.tls.key_file {files.key} is encrypted; its passphrase would have to stand in uvicorn's "
            "argv: decrypt it into a file of mode 0600"
        ) from None
    except ValueError:
        raise ConfigError(f"server.tls.key_file {files.key} holds no PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ConfigError(f"server.tls.key_file {files.key} is not the key of {files.cert}; give the matching pair")
    if stat.S_IMODE(files.key.stat().st_mode) & 0o004:
        raise ConfigError(f"server.tls.key_file {files.key} is readable by every user; chmod 600 it")
    problem = date_problem(cert)
    if problem:
        raise ConfigError(f"{where} {files.cert} {problem}; renew it (or set cert_file and key_file null)")
    if files.ca is not None and not files.ca.is_file():
        raise ConfigError(f"server.tls.ca_file {files.ca} does not exist; fix the path or set it null")
    host = urlsplit(settings.server.url).hostname or ""
    if not covers(cert, host):
        raise ConfigError(
            f"{where} {files.cert} covers {', '.join(cert_names(cert)) or 'no name'}, not {host} where this "
            "tool reaches the server (server.url); add it to the certificate or set server.host to a name it covers"
        )


def haproxy_pem(settings: Settings, files: TlsFiles) -> Path:
    """cert + key in one file (0600) for HAProxy's `crt`, rewritten from the current pair."""
    folder = tls_dir(settings)
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.mkdir(exist_ok=True, mode=0o700)
    pem = folder / "haproxy.pem"
    data = files.cert.read_bytes().rstrip(b"\n") + b"\n" + files.key.read_bytes()
    if not pem.exists() or pem.read_bytes() != data:
        write_file(pem, data, 0o600)
    return pem


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def trust_bundle(all_settings: list[Settings], path: Path) -> Path | None:
    """One file with the CA of every TLS server among all_settings (made now when missing), for
    clients that talk to several (the bench); None when none serves TLS or all use the system store."""
    cas: list[bytes] = []
    for settings in all_settings:
        if settings.server.tls.enabled or cluster_tls(settings):
            files, _ = ensure_tls(settings)
            if files.ca:
                cas.append(files.ca.read_bytes().rstrip(b"\n") + b"\n")
    if not cas:
        return None
    write_file(path, b"".join(dict.fromkeys(cas)), 0o644)
    return path


def trust_for_clients(ca: Path | None) -> Callable[[], None]:
    """Set MLFLOW_TRACKING_SERVER_CERT_PATH for this process and the clients it spawns from now on;
    returns what restores the previous value."""
    before = os.environ.get(CERT_PATH_ENV)
    if ca is not None:
        os.environ[CERT_PATH_ENV] = str(ca)

    def restore() -> None:
        if before is None:
            os.environ.pop(CERT_PATH_ENV, None)
        else:
            os.environ[CERT_PATH_ENV] = before

    return restore
