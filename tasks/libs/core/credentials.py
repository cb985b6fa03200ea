"""Store URIs and secrets: the database password, secrets generated into the state dir."""

from __future__ import annotations

import contextlib
import os
import secrets
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url

from tasks.libs.core.errors import ConfigError
from tasks.libs.core.redact import mask_uri
from tasks.libs.core.settings import Settings
from tasks.libs.core.state import ensure_state_dir


def backend_store_uri(settings: Settings, *, reveal: bool = False) -> str:
    """The SQLAlchemy URI the server stores runs in; the password masked unless reveal."""
    if settings.backend == "sqlite":
        return f"sqlite:///{settings.sqlite_file}"
    return postgres_uri(settings, reveal=reveal)


def store_uri_and_password_env(settings: Settings) -> tuple[str, dict[str, str]]:
    """The store URI without its password, and the environment that carries the password.

    libpq reads PGPASSWORD, so `mlflow server`, `mlflow db upgrade` and `mlflow gc` connect
    with a URI that holds no secret: it may stand in argv, unit files and reports (`mlflow gc`
    takes the store only as --backend-store-uri), and every generated deployment names the
    store the same way. The environment is the one place the password travels.
    """
    if settings.backend == "sqlite":
        return backend_store_uri(settings), {}
    url = make_url(postgres_uri(settings, reveal=True))
    password = url.password
    without = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    return without.render_as_string(hide_password=False), ({"PGPASSWORD": str(password)} if password else {})


def postgres_password(settings: Settings, *, generate: bool = False) -> str:
    """The database password: from config/env, else the one generated into the state dir.

    generate=True creates it (mode 0600) when missing; otherwise a missing one is an error.
    """
    if settings.postgres.password is not None:
        return settings.postgres.password.get_secret_value()
    password = stored_secret(settings, "postgres_password", generate=generate)
    if password is None:
        raise ConfigError(
            "no PostgreSQL password: set MLFLOW_OPS_POSTGRES__PASSWORD or run `inv db.start` "
            f"to generate {settings.state_path / 'secrets' / 'postgres_password'}"
        )
    return password


def stored_secret(settings: Settings, name: str, *, generate: bool) -> str | None:
    """A secret kept in <state_dir>/secrets/<name> (mode 0600), generated on first use if asked."""
    path = settings.state_path / "secrets" / name
    if path.is_file():
        return path.read_text().strip()
    if not generate:
        return None
    ensure_state_dir(settings)
    path.parent.mkdir(exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def generated_secret(settings: Settings, name: str) -> str:
    """The secret kept in <state_dir>/secrets/<name>, made (mode 0600) on first use."""
    value = stored_secret(settings, name, generate=True)
    assert value is not None  # generate=True always yields one
    return value


def postgres_uri(settings: Settings, *, reveal: bool = False) -> str:
    """postgresql+psycopg2:// URI for the configured database (psycopg2, not psycopg 3)."""
    pg = settings.postgres
    if pg.provider == "external":
        if pg.uri is None:
            raise ConfigError("postgres.provider is 'external' but postgres.uri is not set")
        uri = pg.uri.get_secret_value()
        scheme, sep, rest = uri.partition("://")
        if scheme in ("postgresql", "postgres"):
            uri = "postgresql+psycopg2://" + rest
        if pg.password is not None:  # a URI without its password (the prod profile's) takes postgres.password
            url = make_url(uri)
            if url.password is None:
                uri = url.set(password=pg.password.get_secret_value()).render_as_string(hide_password=False)
        return uri if reveal else mask_uri(uri)
    shown = quote(postgres_password(settings), safe="") if reveal else "***"
    return f"postgresql+psycopg2://{quote(pg.user, safe='')}:{shown}@{pg.host}:{pg.port}/{pg.database}"


def known_secrets(settings: Settings) -> tuple[str, ...]:
    """Every secret the settings lead to, for redacting logs and output (core.redact.redact)."""
    found = []
    pg = settings.postgres
    if pg.uri is not None:
        try:
            found.append(make_url(pg.uri.get_secret_value()).password)
        except Exception:
            creds = pg.uri.get_secret_value().partition("://")[2].rpartition("@")[0]
            found.append(creds.partition(":")[2])
    with contextlib.suppress(ConfigError):
        found.append(postgres_password(settings))
    if settings.server.auth.admin_password is not None:
        found.append(settings.server.auth.admin_password.get_secret_value())
    if settings.artifacts.s3.secret_access_key is not None:
        found.append(settings.artifacts.s3.secret_access_key.get_secret_value())
    stored = ("admin_password", "flask_secret_key", "s3_secret_access_key")
    found += [stored_secret(settings, name, generate=False) for name in stored]
    return tuple(secret for secret in dict.fromkeys(found) if secret)
