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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasks.libs.core.errors import ConfigError
from tasks.libs.core.settings import Settings
from tasks.libs.core.state import ensure_state_dir

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_DAYS = 30
CERT_PATH_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"  # MLflow's client: the CA bundle it verifies with
WILDCARD_BINDS = ("0.0.0.0", "::", "")

Key = ec.EllipticCurvePrivateKey


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


# --- making certificates --------------------------------------------------------------------


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(
    common_name: str, *, days: int = CA_DAYS, not_before: dt.datetime | None = None
) -> tuple[x509.Certificate, Key]:
    key = new_key()
    start = (not_before or _now()) - dt.timedelta(minutes=5)  # a clock a little behind still accepts it
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: Key,
    names: list[str],
    *,
    days: int = SERVER_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, Key]:
    """A server certificate for names (DNS names and IP addresses), signed by the CA."""
    key = new_key()
    start = (not_before or _now()) - dt.timedelta(minutes=5)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature (ECDHE)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with mode from the first byte (a key is never briefly readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- reading and judging certificates -------------------------------------------------------


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate covers (its subjectAltName)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def covers(cert: x509.Certificate, host: str) -> bool:
    """Whether the certificate is valid for host (an IP address or a DNS name; `*.` wildcards)."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for name in cert_names(cert):
        if ip is not None:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(name) == ip:
                    return True
            continue
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def date_problem(cert: x509.Certificate, now: dt.datetime | None = None) -> str | None:
    """Why the certificate is not valid now (expired, not yet valid), or None."""
    now = now or _now()
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def describe(cert: x509.Certificate) -> str:
    return f"for {', '.join(cert_names(cert)) or 'no name'}, valid until {cert.not_valid_after_utc:%Y-%m-%d} UTC"


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
            left = ca.not_valid_after_utc - _now()
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
    if cert.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_DAYS):
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


def fingerprint(path: Path) -> str:
    """sha256 of a certificate file's first certificate (changes when it is renewed)."""
    return load_cert(path).fingerprint(hashes.SHA256()).hex()[:16]


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
