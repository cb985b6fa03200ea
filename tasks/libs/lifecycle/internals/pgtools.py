"""PostgreSQL client tools (pg_dump, pg_restore) over TCP, and what the lifecycle reads of a database.

Every provider (local, docker, external) is reached the same way: the binaries that
`find_binaries` finds on this machine, host/port/user/database as arguments, the password
in PGPASSWORD (postgres.connection.libpq_params), never in argv. pg_dump must be at least as new
as the server it dumps (it refuses otherwise), so that is checked first, in one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from psycopg2 import sql
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from tasks.libs.core.credentials import known_secrets, postgres_password
from tasks.libs.core.errors import UserError
from tasks.libs.core.redact import redact
from tasks.libs.core.settings import Settings
from tasks.libs.postgres.binaries import find_binaries
from tasks.libs.postgres.connection import libpq_params, pg_connection

CLIENT_TOOLS = ("pg_dump", "pg_restore", "psql")


def with_database(settings: Settings, database: str) -> Settings:
    """The same server and login, another database."""
    copy = settings.model_copy(deep=True)
    if copy.postgres.provider == "external" and copy.postgres.uri is not None:
        url = make_url(copy.postgres.uri.get_secret_value()).set(database=database)
        copy.postgres.uri = SecretStr(url.render_as_string(hide_password=False))
    else:
        copy.postgres.database = database
    return copy


def pinned_password(settings: Settings) -> Settings:
    """The settings with the password written in, so they still log in from another state dir."""
    copy = settings.model_copy(deep=True)
    if copy.postgres.provider != "external" and copy.postgres.password is None:
        copy.postgres.password = SecretStr(postgres_password(settings))
    return copy


@dataclass
class PgClient:
    bin_dir: Path
    host: str
    port: int
    user: str
    database: str
    env: dict[str, str]
    secrets: tuple[str, ...]

    @classmethod
    def of(cls, settings: Settings) -> PgClient:
        bins = find_binaries(settings.postgres.local.bin_dir, tools=CLIENT_TOOLS)
        if bins is None:
            raise UserError(
                "pg_dump, pg_restore and psql not found: `inv deps` (or apt-get install postgresql-client), "
                "or set postgres.local.bin_dir to their folder"
            )
        params = libpq_params(settings)
        password = params.pop("password", None)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "LC_ALL": "C.UTF-8",
            "PGCONNECT_TIMEOUT": "10",
            # a session of someone else's holding a lock must not stall a restore forever
            "PGOPTIONS": "-c lock_timeout=60s",
            **({"PGPASSWORD": password} if password else {}),
        }
        return cls(
            bins,
            params.get("host", "127.0.0.1"),
            int(params.get("port", 5432)),
            params.get("user", ""),
            params.get("dbname", ""),
            env,
            known_secrets(settings),
        )

    def _args(self, database: str | None) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database or self.database]

    def run(self, tool: str, *args: str, database: str | None = None, connects: bool = True) -> str:
        """Run a client tool; its stdout, or a UserError with its last error line (secrets masked)."""
        cmd = [str(self.bin_dir / tool), *(self._args(database) if connects else []), *args]
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"{tool} failed (exit {result.returncode}): {self._last_error(result.stderr)}")
        return result.stdout

    def _last_error(self, stderr: str) -> str:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
        return redact((errors or lines or ["no message"])[-1], self.secrets)[:400]

    def version(self, tool: str = "pg_dump") -> tuple[int, str]:
        text = subprocess.run([str(self.bin_dir / tool), "--version"], capture_output=True, text=True).stdout.strip()
        match = re.search(r"(\d+)(?:\.\d+)?", text)
        return (int(match.group(1)) if match else 0), text

    def check_server_version(self, settings: Settings) -> str:
        """pg_dump's version line; UserError when it is older than the server's major version."""
        major, text = self.version()
        server = server_version_num(settings) // 10000
        if major < server:
            raise UserError(
                f"{text} is older than the PostgreSQL {server} server and cannot dump it; install "
                f"postgresql-client-{server} (or newer) and set postgres.local.bin_dir to its bin folder"
            )
        return text

    def dump(self, dest: Path) -> None:
        """pg_dump -Fc (one snapshot of the whole database), then pg_restore --list as a readability check."""
        self.run("pg_dump", "-Fc", "--no-owner", "--no-privileges", "-f", str(dest))
        os.chmod(dest, 0o600)
        self.run("pg_restore", "--list", str(dest), connects=False)

    def restore(self, dump: Path, *, database: str | None = None) -> None:
        """pg_restore into an empty database as ONE transaction: killed half-way, the database stays empty.

        (Without --single-transaction a killed restore leaves all tables, alembic_version at head
        and no rows: a store that looks valid and is empty.)
        """
        args = ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
        self.run("pg_restore", *args, str(dump), database=database)

    def restore_replacing(self, dump: Path, *, drop_tables: list[str], drop_functions: list[str]) -> None:
        """Replace the database's objects by the dump's, as ONE transaction (a kill changes nothing).

        pg_restore --clean --if-exists writes the script (it drops only what the dump holds); psql
        runs it with --single-transaction after dropping what the dump does not hold (tables an
        upgrade added, when a backup from before it is put back).
        """
        prefix = "".join(f"DROP TABLE IF EXISTS {_quoted(t)} CASCADE;\n" for t in drop_tables)
        prefix += "".join(f"DROP FUNCTION IF EXISTS {_quoted(f)}() CASCADE;\n" for f in drop_functions)
        script = subprocess.Popen(
            [
                str(self.bin_dir / "pg_restore"),
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
                "-f",
                "-",
                str(dump),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        psql = subprocess.Popen(
            [
                str(self.bin_dir / "psql"),
                *self._args(None),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-f",
                "-",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        assert script.stdout and script.stderr and psql.stdin and psql.stderr
        try:
            psql.stdin.write(prefix.encode())
            while block := script.stdout.read(1 << 20):
                psql.stdin.write(block)
        except BrokenPipeError:  # psql stopped at an error: its stderr says which
            script.kill()
        finally:
            with contextlib.suppress(BrokenPipeError):
                psql.stdin.close()
        script_err = script.stderr.read().decode(errors="replace")
        psql_err = psql.stderr.read().decode(errors="replace")
        script.wait()
        psql.wait()
        if script.returncode != 0 and psql.returncode != 0:
            raise UserError(f"the restore was rolled back (psql exit {psql.returncode}): {self._last_error(psql_err)}")
        if script.returncode != 0:
            raise UserError(f"pg_restore cannot read {dump}: {self._last_error(script_err)}")
        if psql.returncode != 0:
            raise UserError(f"the restore was rolled back (psql exit {psql.returncode}): {self._last_error(psql_err)}")

    def dump_counts(self, dump: Path) -> dict[str, int]:
        """Rows per table in a dump, counted from its COPY data (the snapshot the dump holds)."""
        proc = subprocess.Popen(
            [str(self.bin_dir / "pg_restore"), "--data-only", "-f", "-", str(dump)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        counts: dict[str, int] = {}
        table: str | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if table is None:
                if line.startswith("COPY "):
                    table = line.split()[1].split(".")[-1].strip('"')
                    counts[table] = 0
            elif line == "\\.\n":
                table = None
            else:
                counts[table] += 1  # text COPY escapes newlines inside values: one line per row
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise UserError(f"pg_restore cannot read {dump}: {self._last_error(err)}")
        return dict(sorted(counts.items()))

    def dump_revision(self, dump: Path, table: str = "alembic_version") -> str | None:
        out = self.run("pg_restore", "--data-only", "-t", table, "-f", "-", str(dump), connects=False).splitlines()
        if not any(line.startswith("COPY ") for line in out):
            return None
        rows = out[next(i for i, line in enumerate(out) if line.startswith("COPY ")) + 1 :]
        rows = rows[: rows.index("\\.")] if "\\." in rows else rows
        return ",".join(rows) or None

    def dump_objects(self, dump: Path, kind: str = "TABLE") -> set[str]:
        """The tables (or functions) a dump creates, from its table of contents."""
        found = set()
        for line in self.run("pg_restore", "--list", str(dump), connects=False).splitlines():
            parts = line.split()
            if not line.startswith(";") and len(parts) >= 6 and parts[3] == kind:
                found.add(parts[5].partition("(")[0])
        return found


def server_version_num(settings: Settings) -> int:
    dbname = "postgres" if settings.postgres.provider != "external" else None
    with pg_connection(settings, dbname=dbname, timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version_num")
        return int(cur.fetchone()[0])


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def schema_functions(settings: Settings) -> list[str]:
    """Functions in the database's current schema (MLflow's triggers use one), extensions' left out."""
    with pg_connection(settings, timeout=10) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace "
            "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') ORDER BY 1"
        )
        return [r[0] for r in cur.fetchall()]


def table_counts(settings: Settings) -> dict[str, int]:
    """Rows per table of the configured database (current schema); empty when it has no tables."""
    with pg_connection(settings, timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename")
        tables = [r[0] for r in cur.fetchall()]
        counts = {}
        for table in tables:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            counts[table] = cur.fetchone()[0]
        return counts
