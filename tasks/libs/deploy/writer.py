"""Export: guardrails, the format's files, the secret file if asked, written byte-stable."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from tasks.libs.artifacts.location import s3_credentials
from tasks.libs.core.credentials import generated_secret, postgres_password
from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import ensure_tls
from tasks.libs.deploy import compose, facts, guardrails, helm, helm_objects, systemd
from tasks.libs.deploy.process import (
    CONTAINER_PORT,
    SecretRef,
    container_placement,
    server_process,
    systemd_placement,
)
from tasks.libs.deploy.yamlout import dump
from tasks.libs.monitoring.prometheus import CONFIG_FILE, RULES_FILE, ScrapeTargets, alert_rules, scrape_config
from tasks.libs.server.auth import admin_credentials

GENERATORS: dict[str, Callable[[Settings, str], dict[str, str]]] = {
    "compose": compose.compose_files,
    "helm": helm.helm_files,
    "systemd": systemd.systemd_files,
}


@dataclass
class Written:
    out: Path
    files: list[str]
    secret_files: list[str] = field(default_factory=list)


def default_out(settings: Settings, fmt: str) -> Path:
    return settings.state_path / "deploy" / fmt


def monitoring_files(settings: Settings, fmt: str) -> dict[str, str]:
    """With server.metrics on: a Prometheus scrape config for the exported server and the alert
    rules `cluster.up` writes too (tasks/libs/monitoring), checked by `deploy.check` with promtool."""
    if not settings.server.metrics:
        return {}
    target = {
        "compose": f"mlflow:{CONTAINER_PORT}",  # the service name on the project's network
        "helm": f"{settings.deploy.name}:80",  # the chart's Service, in the release's namespace
        "systemd": f"{settings.server.host}:{settings.server.port}",
    }[fmt]
    targets = ScrapeTargets(mlflow=[target], labels={"deployment": settings.deploy.name})
    exporter = settings.monitoring.postgres_exporter.enabled
    rules = alert_rules(settings.monitoring, haproxy_backend=None, postgres=exporter)
    return {CONFIG_FILE: dump(scrape_config(targets, settings.monitoring)), RULES_FILE: dump(rules)}


def render(settings: Settings, fmt: str, profile: str) -> dict[str, str]:
    """Every file of the format, by name (guardrails first: a refusal writes nothing)."""
    guardrails.check(settings, fmt)
    files = GENERATORS[fmt](settings, profile)
    files.update(monitoring_files(settings, fmt))
    return files


def export(settings: Settings, fmt: str, *, profile: str, out: Path | None, write_secrets: bool) -> Written:
    files = render(settings, fmt, profile)
    secret_files = secrets_files(settings, fmt) if write_secrets else {}
    target = out or default_out(settings, fmt)
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in sorted(files.items()):
            (target / name).write_bytes(text.encode())
        for name, text in sorted(secret_files.items()):
            _write_private(target / name, text)
            if fmt == "compose" and name.startswith("tls/") and os.geteuid() == 0:
                os.chown(target / name, compose.IMAGE_UID, compose.IMAGE_UID)  # the container's user reads it
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}; pick another --out") from None
    return Written(target, sorted(files), sorted(secret_files))


def secrets_files(settings: Settings, fmt: str) -> dict[str, str]:
    """The file that holds the secrets' values (mode 0600): Compose .env, Helm secrets.yaml,
    systemd <name>.env."""
    if fmt == "systemd":
        server = server_process(settings, systemd_placement(settings))
        gc = systemd.gc_unit_process(settings)
        refs = {k for p in (server, gc) if p for k, v in p.env.items() if isinstance(v, SecretRef)}
        values = secret_values(settings, sorted({SecretRef(v).secret for v in refs}))
        return {f"{settings.deploy.name}.env": systemd.env_file(sorted(refs), values), **tls_secret_files(settings)}
    db = facts.database(settings)
    server = server_process(
        settings, container_placement(bundled_database=fmt == "compose" and db is not None and db.ours)
    )
    values = secret_values(settings, server.secrets())
    if fmt == "compose":
        return {".env": compose.env_file(values), **tls_secret_files(settings)}
    objects = helm_objects.secret_objects(settings, helm.secret_names(settings), values)
    tls = tls_secret_files(settings)
    if tls:  # the ingress's TLS secret (kubernetes.io/tls)
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": helm.tls_secret_name(settings)},
                "type": "kubernetes.io/tls",
                "stringData": {"tls.crt": tls["tls/server.crt"], "tls.key": tls["tls/server.key"]},
            }
        )
    text = "---\n".join(dump(obj) for obj in objects)
    return {"secrets.yaml": "# kubectl apply -f secrets.yaml (written by `inv deploy.helm --write-secrets`)\n" + text}


def tls_secret_files(settings: Settings) -> dict[str, str]:
    """With server.tls: the certificate, key and CA to install (the tool's own, made now when missing
    as server.start makes them, for deploy.public_host among the names; or your files)."""
    if not settings.server.tls.enabled:
        return {}
    files, _ = ensure_tls(settings)
    out = {"tls/server.crt": files.cert.read_text(), "tls/server.key": files.key.read_text()}
    if files.ca:
        out["tls/ca.crt"] = files.ca.read_text()
    return out


def secret_values(settings: Settings, secrets: list[str]) -> dict[str, str]:
    """The values, from config, the environment or the state dir (generated there when missing,
    as server.start does)."""
    out = {}
    # Those that may be missing first, so that a refusal leaves no freshly generated secret behind.
    for secret in sorted(secrets, key=lambda s: s in ("admin_password", "flask_secret_key")):
        if secret == "postgres_password":
            out[secret] = _postgres_password(settings)
        elif secret == "admin_password":
            out[secret] = admin_credentials(settings)[1]
        elif secret == "flask_secret_key":
            out[secret] = generated_secret(settings, "flask_secret_key")
        else:
            credentials = s3_credentials(settings)
            if credentials is None:
                raise UserError(
                    "no S3 credentials to write: set artifacts.s3.access_key_id and secret_access_key "
                    "(MLFLOW_OPS_ARTIFACTS__S3__ACCESS_KEY_ID / __SECRET_ACCESS_KEY), or write the secret yourself"
                )
            out[secret] = credentials[0] if secret == "s3_access_key_id" else credentials[1]
    return out


def _postgres_password(settings: Settings) -> str:
    pg = settings.postgres
    if pg.provider != "external":
        return postgres_password(settings, generate=True)
    password = make_url(pg.uri.get_secret_value()).password if pg.uri is not None else None
    if password is None and pg.password is not None:
        password = pg.password.get_secret_value()
    if not password:
        raise UserError(
            "no PostgreSQL password to write: postgres.uri has none; set MLFLOW_OPS_POSTGRES__PASSWORD (postgres.password)"
        )
    return str(password)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode())
    path.chmod(0o600)  # an existing file keeps its old mode through O_CREAT
