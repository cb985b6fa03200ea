"""`db` collection: the PostgreSQL backend (docker, local binaries, or an external server)."""

import os
import time

from invoke import task
from invoke.exceptions import Exit
from psycopg2.extensions import parse_dsn
from tabulate import tabulate

from tasks.libs.cluster.standby import Standby, with_standby
from tasks.libs.core.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.core.credentials import postgres_uri
from tasks.libs.core.errors import UserError
from tasks.libs.postgres.connection import recreate_database
from tasks.libs.postgres.providers import provider_for, remember_provider
from tasks.libs.server.command import is_loopback
from tasks.libs.server.lifecycle import running_record

COMMON = {
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
    "provider": "auto, docker, local or external (default from config)",
}


def _settings(profile, config, provider):
    return settings_from(profile, config, backend="postgres", **{"postgres.provider": provider}).settings


@task(help=COMMON)
def start(c, profile=None, config=None, provider=None):
    """Start PostgreSQL (reused if it already runs) and wait until it takes queries."""
    with user_errors():
        began = time.monotonic()
        settings = _settings(profile, config, provider)
        db = provider_for(settings)
        if not is_loopback(settings.postgres.host) and db.name != "external":
            print(f"WARNING: PostgreSQL listens on {settings.postgres.host}, reachable from other machines")
        message = db.start()
        remember_provider(settings, db.name)
    print(f"{message} [{db.name}, {time.monotonic() - began:.1f} s]")


@task(help=COMMON)
def stop(c, profile=None, config=None, provider=None):
    """Stop PostgreSQL if we started it; its data stays."""
    with user_errors():
        print(provider_for(_settings(profile, config, provider)).stop())


@task(help=COMMON)
def status(c, profile=None, config=None, provider=None):
    """Show whether PostgreSQL runs and answers, and where its data is; exit 3 when it does not run."""
    with user_errors():
        settings = _settings(profile, config, provider)
        db = provider_for(settings)
        state = db.status()
        if db.name == "local":
            state = with_standby(settings, state)  # the read replica and its replay lag
    print(tabulate(sorted(state.items()), tablefmt="plain"))
    if not state.get("running"):
        raise Exit(code=3)


@task(help={**COMMON, "lines": "how many lines from the end (default 50)"})
def logs(c, profile=None, config=None, provider=None, lines=50):
    """Print the end of PostgreSQL's log."""
    with user_errors():
        print(provider_for(_settings(profile, config, provider)).logs(int(lines)))


@task(help={**COMMON, "reveal": "print the password instead of ***"})
def url(c, profile=None, config=None, provider=None, reveal=False):
    """Print the SQLAlchemy URI the server uses (password masked unless --reveal)."""
    with user_errors():
        print(postgres_uri(_settings(profile, config, provider), reveal=reveal))


@task(
    help={
        **COMMON,
        "yes": "do not ask for confirmation",
        "wipe": "remove the whole cluster (local data dir, or docker container + volume), not just the database",
    }
)
def reset(c, profile=None, config=None, provider=None, yes=False, wipe=False):
    """Empty the MLflow database (drop and create it); asks first unless --yes."""
    with user_errors():
        settings = _settings(profile, config, provider)
        db = provider_for(settings)
        if db.name == "external":
            raise UserError("refusing to reset an external PostgreSQL: it is not ours; drop its tables yourself")
        server = running_record(settings)
        if server and server.backend == "postgres":
            raise UserError(f"the MLflow server (pid {server.pid}) uses this database; `inv server.stop` first")
        what = f"the whole {db.name} cluster" if wipe else f"database {settings.postgres.database}"
        if not yes and input(f"Delete every run in {what}? Type 'yes': ").strip() != "yes":
            raise UserError("not confirmed; nothing changed")
        if wipe:
            if db.name == "local":
                Standby(settings).stop(wipe=True)  # a copy of the cluster being wiped is of no use
            db.stop()
            db.wipe()
            print(f"removed {what}; `inv db.start` makes a fresh one")
            return
        db.start()
        recreate_database(settings)
        print(f"database {settings.postgres.database} is empty again")


@task(help=COMMON)
def psql(c, profile=None, config=None, provider=None):
    """Open a psql shell on the MLflow database (password passed by environment, not argv)."""
    with user_errors():
        dsn = parse_dsn(postgres_uri(_settings(profile, config, provider), reveal=True).replace("+psycopg2", "", 1))
    env = {"PGPASSWORD": dsn.pop("password", "")}
    args = " ".join(f"--{k if k != 'user' else 'username'}={v}" for k, v in dsn.items() if k != "dbname")
    c.run(f"psql {args} --dbname={dsn.get('dbname', '')}", env=env, pty=os.isatty(0), warn=True)
