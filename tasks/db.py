"""`db` collection: the PostgreSQL backend (docker, local binaries, or an external server), and the
store's life on either backend: backup, restore, upgrade, migrate, gc, vacuum."""

import os
import shlex
import time
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from tasks.cli import CONFIG_HELP, PROFILE_HELP, settings_from, user_errors
from tasks.libs.cluster.standby import Standby, with_standby
from tasks.libs.core.credentials import backend_store_uri, postgres_uri
from tasks.libs.core.durations import parse_duration
from tasks.libs.core.errors import UserError
from tasks.libs.lifecycle.backup import BACKUP_LIST_HEADERS, backup_rows, take_backup
from tasks.libs.lifecycle.gc import collect
from tasks.libs.lifecycle.internals.journal import interruption_notes
from tasks.libs.lifecycle.internals.manifest import backups_dir, resolve_backup
from tasks.libs.lifecycle.internals.root_rewrite import parse_rewrite
from tasks.libs.lifecycle.internals.runtime import runtime_for
from tasks.libs.lifecycle.migrate import migrate as migrate_store
from tasks.libs.lifecycle.rehearsal import rehearse as run_rehearsal
from tasks.libs.lifecycle.restore import restore_backup
from tasks.libs.lifecycle.upgrade import apply_upgrade
from tasks.libs.lifecycle.vacuum import TABLE_HEADERS as VACUUM_TABLE_HEADERS
from tasks.libs.lifecycle.vacuum import vacuum as vacuum_store
from tasks.libs.postgres.connection import libpq_dsn, libpq_params, recreate_database
from tasks.libs.postgres.providers import provider_for, remember_provider
from tasks.libs.reporting.formats import human_bytes, table
from tasks.libs.server.command import is_loopback
from tasks.libs.server.control import running_record
from tasks.libs.store.reader import open_store

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
    print(table(sorted(state.items()), plain=True))
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
        params = libpq_params(_settings(profile, config, provider))
    env = {"PGPASSWORD": params.pop("password", "")}
    c.run(f"psql --dbname={shlex.quote(libpq_dsn(params))}", env=env, pty=os.isatty(0), warn=True)


# --- the store's life: backup, restore, upgrade, migrate, gc, vacuum -----------------------

STORE = {
    "backend": "sqlite or postgres: which configured store (default from config)",
    "profile": PROFILE_HELP,
    "config": CONFIG_HELP,
}


def _store_settings(profile, config, backend):
    """The configured store's settings; prints what an interrupted lifecycle operation left behind."""
    settings = settings_from(profile, config, backend=backend).settings
    for note in interruption_notes(settings):
        print(note)
    return settings


@task(help=STORE)
def backup(c, backend=None, profile=None, config=None):
    """Back up the store (SQLite backup API or pg_dump -Fc), the auth database and the artifacts, with a manifest."""
    with user_errors():
        settings = _store_settings(profile, config, backend)
        result = take_backup(settings, say=print)
    m = result.manifest
    print(result.steps.render())
    print(
        f"backup {result.folder}: revision {m.alembic_revision}, {m.total_rows} rows in {len(m.row_counts)} tables, "
        f"{human_bytes(sum(m.sizes.values()))}, artifacts {m.artifacts['mode']}"
    )
    for old in result.pruned:
        print(f"removed old backup {old.name} (lifecycle.keep_backups)")


@task(
    help={
        **STORE,
        "backup": "backup folder (a path, or a name in the backups folder); default: the latest of this backend",
        "force": "replace a store that holds data (the old one is kept: file moved aside / dumped first)",
        "list": "list the backups of this backend (age, revision, rows, size, sha256 check) and exit",
    }
)
def restore(c, backup=None, backend=None, force=False, list=False, profile=None, config=None):
    """Restore a backup into the configured store; refuses a store holding data without --force."""
    with user_errors():
        settings = _store_settings(profile, config, backend)
        if list:
            rows = backup_rows(settings, settings.backend)
            print(
                table(rows, BACKUP_LIST_HEADERS)
                if rows
                else f"no {settings.backend} backups in {backups_dir(settings)}"
            )
            return
        folder = resolve_backup(settings, settings.backend, backup)
        print(f"restoring {folder} into {backend_store_uri(settings)}")
        result = restore_backup(settings, folder, force=force, say=print)
    print(result.steps.render())
    if result.kept:
        print(f"the store it replaced is kept in {result.kept}")
    print("restored; `inv server.start` then `inv test.deployment` to prove it")


@task(
    help={
        **STORE,
        "apply": "upgrade the real store (needs a stopped server and a backup younger than lifecycle.max_backup_age)",
        "rehearse": "rehearse on a restored copy of the latest backup (the default unless --apply)",
        "to": "rehearse with another MLflow release, installed into a private venv (e.g. 3.18.0)",
        "no_backup": "with --apply: go on without a recent backup (you said so)",
        "no_server_checks": "skip the deployment checks against a server on the rehearsal copy",
    }
)
def upgrade(
    c,
    backend=None,
    apply=False,
    rehearse=False,
    to=None,
    no_backup=False,
    no_server_checks=False,
    profile=None,
    config=None,
):
    """Rehearse `mlflow db upgrade` on a restored copy of the latest backup (default), or --apply it to the store."""
    with user_errors():
        if apply and (rehearse or to):
            raise UserError("--apply upgrades with the installed MLflow; rehearse (and --to) first, then --apply alone")
        settings = _store_settings(profile, config, backend)
        if apply:
            applied = apply_upgrade(settings, no_backup=no_backup, say=print)
            for note in applied.notes:
                print(note)
            if applied.preflight.state == "head":
                print(f"nothing to do: the store is {applied.preflight.describe()}")
                return
            print(applied.steps.render())
            if applied.kept:
                print(f"the store before the upgrade is kept in {applied.kept}")
            print(f"upgraded to {applied.preflight.head}; `inv server.start`, then `inv test.deployment`")
            return
        with open_store(backend_store_uri(settings, reveal=True)):
            pass  # a missing or foreign store is refused before a venv is installed for --to
        runtime = runtime_for(settings, to, say=print)
        result = run_rehearsal(
            settings, runtime, server_checks=settings.lifecycle.server_checks and not no_server_checks, say=print
        )
    if result.preflight.state == "head":
        print(f"nothing to rehearse: the store is {result.preflight.describe()}")
        return
    print(result.steps.render())
    if not result.ok:
        for problem in result.problems[:10]:
            print(f"  PROBLEM {problem}")
        raise Exit(
            f"rehearsal FAILED ({len(result.problems)} problem(s)); scratch copy kept in {result.scratch}", code=1
        )
    print(
        f"rehearsal OK: {result.preflight.stored} -> {runtime.head} with MLflow {runtime.version}, "
        f"{sum(result.rows_checked.values())} rows checked; next: `inv server.stop`, `inv db.upgrade --apply`"
    )


@task(
    help={
        "source": "SQLite store file to copy (default: the configured sqlite.path / <state_dir>/mlflow.db)",
        "dry_run": "plan, prescan and count; write nothing",
        "rewrite_artifact_root": "OLD=NEW: replace this prefix in every artifact location (counted in --dry-run)",
        "no_server_checks": "skip the deployment checks against a server on a copy of the new store",
        "profile": PROFILE_HELP,
        "config": CONFIG_HELP,
    }
)
def migrate(
    c, source=None, dry_run=False, rewrite_artifact_root=None, no_server_checks=False, profile=None, config=None
):
    """Copy the SQLite store into the configured PostgreSQL keeping every ID, in one transaction; verify the copy."""
    with user_errors():
        sqlite_settings = _store_settings(profile, config, "sqlite")
        pg_settings = settings_from(profile, config, backend="postgres").settings
        rewrite = parse_rewrite(rewrite_artifact_root)
        result = migrate_store(
            sqlite_settings,
            pg_settings,
            source=Path(source) if source else None,
            dry_run=dry_run,
            rewrite=rewrite,
            server_checks=pg_settings.lifecycle.server_checks and not no_server_checks,
            say=print,
        )
    print(result.steps.render())
    for root, n in result.roots.items():
        print(f"artifact root {root}: {n} experiment(s)")
    if result.rewrite is not None:
        print(
            "rewrite "
            + ", ".join(f"{k}={v}" for k, v in result.rewrite.items() if v)
            + (" (dry run)" if dry_run else "")
        )
    if result.problems:
        for problem in result.problems[:20]:
            print(f"  PROBLEM {problem}")
        written = (
            "nothing was written" if result.plan and result.plan.problems else "the target holds the copy as written"
        )
        raise Exit(f"migrate FAILED ({len(result.problems)} problem(s)); {written}", code=1)
    if dry_run:
        print(
            f"dry run: {result.plan.total_rows if result.plan else 0} rows would be copied into {result.target}; nothing was written"
        )
        return
    print(f"migrated into {result.target}: {result.compared}; next: `inv server.start --backend postgres`")


@task(
    help={
        **STORE,
        "older_than": "remove what was deleted at least this long ago, e.g. 30d, 12h, 1d6h (default lifecycle.gc_older_than)",
        "dry_run": "show what would be removed, with sizes; remove nothing",
        "apply": "also remove orphan artifact folders (folders no run, model or experiment of either store claims)",
    }
)
def gc(c, backend=None, older_than=None, dry_run=False, apply=False, profile=None, config=None):
    """Permanently remove deleted runs, experiments and logged models older than --older-than (wraps mlflow gc)."""
    with user_errors():
        settings = _store_settings(profile, config, backend)
        other_backend = "postgres" if settings.backend == "sqlite" else "sqlite"
        other = settings_from(profile, config, backend=other_backend).settings
        older = older_than or settings.lifecycle.gc_older_than
        try:
            parse_duration(older)
        except ValueError as exc:
            raise UserError(f"--older-than: {exc}") from None
        result = collect(settings, other, older_than=older, dry_run=dry_run, apply=apply, say=print)
    verb = "would remove" if dry_run else "removed"
    shown = result.items if dry_run else result.removed
    if shown and result.workspaces:
        print(
            table(
                [[i.workspace, i.kind, i.id, i.name, i.files, i.bytes] for i in shown],
                ["workspace", "kind", "id", "name", "files", "bytes"],
            )
        )
    elif shown:
        print(
            table([[i.kind, i.id, i.name, i.files, i.bytes] for i in shown], ["kind", "id", "name", "files", "bytes"])
        )
    print(result.steps.render())
    print(
        f"{verb} {len(shown)} item(s) deleted more than {older} ago, {sum(i.bytes for i in shown)} bytes of artifacts"
    )
    if result.orphans:
        gone = {o["path"] for o in result.orphans_removed}
        print(
            table(
                [
                    [o["path"], o["kind"], o["files"], o["bytes"], "removed" if o["path"] in gone else "kept"]
                    for o in result.orphans
                ],
                ["orphan folder", "why", "files", "bytes", ""],
            )
        )
        if result.orphans_note:
            print(result.orphans_note)
        elif not gone:
            print(
                f"{len(result.orphans)} orphan folder(s), {sum(o['bytes'] for o in result.orphans)} bytes: `--apply` removes them"
            )


@task(help={**STORE, "full": "PostgreSQL: VACUUM (FULL, ANALYZE), which rewrites tables (needs a stopped server)"})
def vacuum(c, backend=None, full=False, profile=None, config=None):
    """PostgreSQL VACUUM (ANALYZE) with table sizes before/after; SQLite checkpoint, VACUUM, integrity check."""
    with user_errors():
        settings = _store_settings(profile, config, backend)
        result = vacuum_store(settings, full=full, say=print)
    if result.tables:
        print(table(result.tables, VACUUM_TABLE_HEADERS))
    print(result.steps.render())
    rows = [
        [k, result.before.get(k, 0), result.after.get(k, 0)] for k in dict.fromkeys([*result.before, *result.after])
    ]
    print(table(rows, ["bytes", "before", "after"]))
