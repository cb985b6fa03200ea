"""server.tls: the private CA and server certificate the tool makes, and the files a user gives."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat

import pytest

from tasks.libs.core import certificates, tls
from tasks.libs.core.errors import ConfigError
from tests.support.settings import make_settings


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_settings_refuse_half_a_pair_and_make_the_url_https(tmp_path):
    with pytest.raises(ConfigError, match="both cert_file and key_file"):
        make_settings(tmp_path, **{"server.tls.enabled": True, "server.tls.cert_file": "/etc/x.crt"})
    with pytest.raises(ConfigError, match="ca_file goes with a cert_file"):
        make_settings(tmp_path, **{"server.tls.ca_file": "/etc/ca.crt"})
    settings = make_settings(tmp_path, **{"server.tls.enabled": True, "server.port": 3200})
    assert settings.server.url == "https://127.0.0.1:3200"
    assert tls.cluster_tls(settings) is True  # cluster.tls null follows server.tls.enabled
    assert tls.client_ca(settings) == tmp_path / "secrets" / "tls" / "ca.crt"
    assert tls.tls_client_env(make_settings(tmp_path)) == {}


def test_the_tool_makes_a_private_ca_and_a_certificate_with_private_keys(tmp_path):
    settings = make_settings(tmp_path, **{"server.tls.enabled": True, "deploy.public_host": "mlflow.example.com"})
    files, notes = tls.ensure_tls(settings)
    folder = tmp_path / "secrets" / "tls"
    assert _mode(folder) == 0o700 and _mode(folder.parent) == 0o700
    assert _mode(folder / "ca.key") == 0o600 and _mode(files.key) == 0o600
    assert _mode(files.cert) == 0o644 and files.ca == folder / "ca.crt"
    assert len(notes) == 2 and "private CA" in notes[0]
    cert = certificates.load_cert(files.cert)
    for name in ("localhost", "127.0.0.1", "::1", "mlflow.example.com"):
        assert certificates.covers(cert, name), name
    assert not certificates.covers(cert, "evil.example.com")
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == certificates.SERVER_DAYS
    # OpenSSL itself accepts the chain (strict X.509 checks as Python 3.13 turns them on)
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
    ctx.load_cert_chain(files.cert, files.key)  # the key matches
    # no key bytes in the notes a user sees
    key_text = files.key.read_text()
    assert not any(line in " ".join(notes) for line in key_text.splitlines()[1:-1])


def test_a_second_start_reuses_a_valid_certificate_and_new_names_remake_it_with_the_same_ca(tmp_path):
    settings = make_settings(tmp_path, **{"server.tls.enabled": True})
    files, _ = tls.ensure_tls(settings)
    assert files.ca is not None
    first, ca = certificates.fingerprint(files.cert), certificates.fingerprint(files.ca)
    assert tls.ensure_tls(settings)[1] == []
    assert certificates.fingerprint(files.cert) == first
    wider = make_settings(tmp_path, **{"server.tls.enabled": True, "server.host": "0.0.0.0"})
    _, notes = tls.ensure_tls(wider)
    assert len(notes) == 1 and "did not cover" in notes[0]
    assert certificates.fingerprint(files.cert) != first and certificates.fingerprint(files.ca) == ca
    assert certificates.covers(
        certificates.load_cert(files.cert), socket.gethostname()
    )  # binding all interfaces: the host name too


def test_an_expired_or_foreign_certificate_is_remade(tmp_path):
    settings = make_settings(tmp_path, **{"server.tls.enabled": True})
    files, _ = tls.ensure_tls(settings)
    assert files.ca is not None
    ca = certificates.load_cert(files.ca)
    ca_key = tls.serialization.load_pem_private_key((files.ca.parent / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, tls.ec.EllipticCurvePrivateKey)
    old, key = certificates.issue(
        ca,
        ca_key,
        ["localhost", "127.0.0.1", "::1"],
        days=10,
        not_before=certificates.utc_now() - dt.timedelta(days=20),
    )
    certificates.write_file(files.cert, certificates.cert_pem(old), 0o644)
    certificates.write_file(files.key, certificates.key_pem(key), 0o600)
    assert "expired" in tls.ensure_tls(settings)[1][0]
    other_ca, other_key = certificates.make_ca("someone else")
    foreign, key = certificates.issue(other_ca, other_key, ["localhost", "127.0.0.1", "::1"])
    certificates.write_file(files.cert, certificates.cert_pem(foreign), 0o644)
    assert "another CA" in tls.ensure_tls(settings)[1][0]
    assert certificates.signed_by(certificates.load_cert(files.cert), ca)


def _given(tmp_path, names, *, days=30, not_before=None, key_mode=0o600):
    ca, ca_key = certificates.make_ca("user CA")
    cert, key = certificates.issue(ca, ca_key, names, days=days, not_before=not_before)
    paths = {n: tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem")}
    paths["ca.pem"].write_bytes(certificates.cert_pem(ca))
    paths["cert.pem"].write_bytes(certificates.cert_pem(cert))
    certificates.write_file(paths["key.pem"], certificates.key_pem(key), key_mode)
    return make_settings(
        tmp_path / "state",
        **{
            "server.tls.enabled": True,
            "server.tls.cert_file": str(paths["cert.pem"]),
            "server.tls.key_file": str(paths["key.pem"]),
            "server.tls.ca_file": str(paths["ca.pem"]),
        },
    )


def test_given_files_are_used_as_they_are_when_usable(tmp_path):
    settings = _given(tmp_path, ["127.0.0.1"])
    files, notes = tls.ensure_tls(settings)
    assert notes == [] and files.cert == tmp_path / "cert.pem" and files.ca == tmp_path / "ca.pem"
    assert not (tmp_path / "state" / "secrets" / "tls").exists()
    assert tls.uvicorn_tls_opts(settings) == ["--ssl-certfile", str(files.cert), "--ssl-keyfile", str(files.key)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"names": ["mlflow.example.com"]}, r"covers mlflow.example.com, not 127.0.0.1"),
        (
            {"names": ["127.0.0.1"], "days": 1, "not_before": certificates.utc_now() - dt.timedelta(days=3)},
            r"expired on",
        ),
        ({"names": ["127.0.0.1"], "key_mode": 0o644}, r"readable by every user; chmod 600"),
    ],
)
def test_given_files_that_cannot_serve_are_refused_in_one_line(tmp_path, kwargs, message):
    settings = _given(tmp_path, **kwargs)
    with pytest.raises(ConfigError, match=message):
        tls.ensure_tls(settings)


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path):
    settings = _given(tmp_path, ["127.0.0.1"])
    certificates.write_file(tmp_path / "key.pem", certificates.key_pem(certificates.new_key()), 0o600)
    with pytest.raises(ConfigError, match="is not the key of"):
        tls.ensure_tls(settings)


def test_wildcards_and_ip_addresses_are_matched_as_tls_clients_match_them(tmp_path):
    ca, ca_key = certificates.make_ca("CA")
    cert, _ = certificates.issue(ca, ca_key, ["*.example.com", "10.0.0.1", "::1"])
    assert certificates.covers(cert, "mlflow.example.com") and not certificates.covers(cert, "a.b.example.com")
    assert not certificates.covers(cert, "example.com")
    assert (
        certificates.covers(cert, "10.0.0.1")
        and certificates.covers(cert, "[::1]")
        and not certificates.covers(cert, "10.0.0.2")
    )
