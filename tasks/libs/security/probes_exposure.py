"""What this machine shows of a deployment we laid out: listening sockets, pg_hba rules, file
modes, and configured secrets in logs, process arguments and reports.

These need local knowledge (Target.local) and are SKIPPED for a server that is not the
configured one. Every walk is bounded in entries and bytes.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import psutil

from tasks.libs.core.errors import ConfigError
from tasks.libs.core.processes import group_members
from tasks.libs.reporting.records import CheckFailed, CheckSkipped
from tasks.libs.security.target import Local, PgLocal, Target, is_loopback

TCP_TYPES = ("host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")
HBA_SQL = "SELECT line_number, type, address, auth_method, error FROM pg_hba_file_rules ORDER BY line_number"
PRIVATE_DIRS = ("secrets", "server", "auth")  # walked whole: secrets, logs, pid files, the auth database
SHARED_DIRS = ("reports",)  # meant to be read (redacted); only a world-writable one is wrong
WALK_FILES = 5000
SCAN_BYTES = 1 << 30
TEXT_SUFFIXES = {".md", ".json", ".xml", ".csv", ".txt", ".log", ".html", ".yaml", ".yml"}
MIN_SECRET = 6  # shorter "secrets" would match by chance


# --- listening addresses ------------------------------------------------------------------


def listening_addresses(procs: Iterable[psutil.Process]) -> list[tuple[str, int]]:
    found = set()
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
        except psutil.AccessDenied:
            raise CheckSkipped(f"cannot see the sockets of pid {proc.pid} (another user's process)") from None
        except psutil.NoSuchProcess:
            continue
    return sorted(found)


def server_addresses(local: Local | None) -> list[tuple[str, int]] | None:
    """(ip, port) the server's process group listens on; None when unknown."""
    if local is None or local.server_pgid is None:
        return None
    try:
        return listening_addresses(group_members(local.server_pgid))
    except CheckSkipped:
        return None


def postgres_addresses(pg: PgLocal) -> list[tuple[str, int]]:
    try:
        postmaster = psutil.Process(pg.postmaster_pid)
        return listening_addresses([postmaster, *postmaster.children(recursive=True)])
    except psutil.NoSuchProcess:
        return []


def as_config_says(ip: str, host: str) -> bool:
    """ip is an address that binding host gives (0.0.0.0/:: give any; a loopback name, loopback)."""
    ip = ip.split("%")[0]
    if host in ("0.0.0.0", "::", "", "*") or ip == host:
        return True
    if is_loopback(host):
        return is_loopback(ip)
    try:
        return ip in {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False


def _shown(addresses: list[tuple[str, int]]) -> str:
    return ", ".join(f"{ip}:{port}" for ip, port in addresses) or "nothing"


def check_listen_addresses(target: Target) -> str:
    local = target.local
    checked, bad = [], []
    if local and local.server_pgid is not None:
        addresses = listening_addresses(group_members(local.server_pgid))
        wide = [(ip, port) for ip, port in addresses if not as_config_says(ip, local.bind_host)]
        checked.append(f"the server on {_shown(addresses)}")
        if wide:
            bad.append(f"the server listens on {_shown(wide)} but config binds {local.bind_host} (server.host)")
    pg = local.pg if local else None
    if pg and pg.postmaster_pid:
        addresses = postgres_addresses(pg)
        wide = [(ip, port) for ip, port in addresses if not as_config_says(ip, pg.host)]
        checked.append(f"PostgreSQL on {_shown(addresses)}")
        if wide:
            bad.append(f"PostgreSQL listens on {_shown(wide)} but config says {pg.host} (postgres.host)")
    if not checked:
        raise CheckSkipped("no process of ours to look at (only the configured server's and PostgreSQL's are)")
    if bad:
        raise CheckFailed("; ".join(bad))
    return "; ".join(checked) + ", as config says"


# --- pg_hba.conf ----------------------------------------------------------------------------


def hba_rules(pg: PgLocal) -> tuple[list[dict], str]:
    """The rules and where they were read: pg_hba_file_rules (superuser or a grant), else the file.

    Both show the file as it is on disk, before any reload: a line planted a moment ago counts.
    """
    import psycopg2

    from tasks.libs.postgres.connection import ConnectError, pg_connection

    why = ""
    try:
        with pg_connection(pg.settings, timeout=5) as conn, conn.cursor() as cur:
            cur.execute(HBA_SQL)
            columns = [d[0] for d in cur.description]
            return [dict(zip(columns, row)) for row in cur.fetchall()], "pg_hba_file_rules"
    except psycopg2.errors.InsufficientPrivilege:
        why = "the role may not read pg_hba_file_rules"
    except ConnectError as exc:
        why = f"cannot connect ({exc.reason[:80]})"
    except (psycopg2.Error, ConfigError) as exc:
        why = f"cannot connect ({str(exc).strip().splitlines()[0][:80] if str(exc).strip() else type(exc).__name__})"
    hba = pg.data_dir / "pg_hba.conf" if pg.data_dir else None
    if hba is None or not os.access(hba, os.R_OK):
        raise CheckSkipped(
            f"{why}, and pg_hba.conf is not readable here (grant pg_read_all_settings, or run on the database host)"
        )
    return parse_hba(hba.read_text()), str(hba)


def parse_hba(text: str) -> list[dict]:
    rules = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        kind = fields[0]
        if kind == "local" and len(fields) >= 4:
            rules.append({"line_number": number, "type": kind, "address": None, "auth_method": fields[3]})
        elif kind in TCP_TYPES and len(fields) >= 5:
            # host DB USER ADDRESS METHOD [options] | host DB USER IP-ADDRESS IP-MASK METHOD [options]
            separate_mask = "/" not in fields[3] and len(fields) >= 6 and any(c in fields[4] for c in ".:")
            method = fields[5] if separate_mask else fields[4]
            rules.append({"line_number": number, "type": kind, "address": fields[3], "auth_method": method})
        else:
            rules.append(
                {"line_number": number, "type": kind, "address": None, "auth_method": None, "error": "not parsed"}
            )
    return rules


def check_pg_hba(target: Target) -> str:
    pg = target.local.pg if target.local else None
    if pg is None:
        raise CheckSkipped("the store is not a PostgreSQL we know (only the configured one is looked at)")
    rules, source = hba_rules(pg)
    trusting = [r for r in rules if r["type"] in TCP_TYPES and r["auth_method"] == "trust"]
    if trusting:
        lines = ", ".join(
            f"line {r['line_number']} ({r['type']} {r['address'] or ''})".replace(" )", ")") for r in trusting
        )
        raise CheckFailed(f"pg_hba.conf lets TCP clients in without a password: {lines} (read from {source})")
    notes = []
    socket_trust = [r for r in rules if r["type"] == "local" and r["auth_method"] == "trust"]
    if socket_trust:
        notes.append(f"{len(socket_trust)} trust line(s) for the local socket")
    errors = [r for r in rules if r.get("error")]
    if errors:
        notes.append(f"{len(errors)} line(s) PostgreSQL cannot read")
    tail = f" ({'; '.join(notes)})" if notes else ""
    return f"{len(rules)} rules, none trusts TCP clients (read from {source}){tail}"


# --- file modes -----------------------------------------------------------------------------


def exposed_to_others(path: Path) -> str | None:
    """Why another local user could read or change path, or None. Behind a folder others
    cannot traverse (no o+x on an ancestor) nothing is exposed, whatever its own mode."""
    if not all(parent.stat().st_mode & 0o001 for parent in path.parents):
        return None
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        return f"{path} is world-writable ({oct(mode)})"
    if mode & 0o004:
        return f"{path} {'can be listed' if stat.S_ISDIR(st.st_mode) else 'is readable'} by others ({oct(mode)})"
    return None


def private_paths(local: Local) -> tuple[list[Path], list[Path]]:
    """(paths others must neither read nor change, paths others must not change)."""
    state = local.state_dir
    private: list[Path] = [state]
    shared: list[Path] = []
    for entry in sorted(state.iterdir()):
        (shared if entry.name in SHARED_DIRS else private).append(entry)
        if entry.name in PRIVATE_DIRS and entry.is_dir() and not entry.is_symlink():
            private += [p for _, p in zip(range(WALK_FILES), entry.rglob("*"))]
    if local.sqlite_file:
        private += [Path(f"{local.sqlite_file}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    if local.pg:
        private += [p for p in (local.pg.cluster_root, local.pg.data_dir, local.pg.log_file) if p]
    return private, shared


def check_file_modes(target: Target) -> str:
    local = target.local
    if local is None or not local.state_dir.is_dir():
        raise CheckSkipped("no local state directory (only the configured deployment's is looked at)")
    private, shared = private_paths(local)
    bad, looked = [], 0
    for path, readable_ok in [*((p, False) for p in dict.fromkeys(private)), *((p, True) for p in shared)]:
        try:
            if not os.path.lexists(path) or path.is_symlink():
                continue
            looked += 1
            why = exposed_to_others(path)
        except PermissionError:
            continue  # a folder closed to us is closed to others too
        if why and not (readable_ok and "world-writable" not in why):
            bad.append(why)
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckFailed(
            f"{len(bad)} path(s) open to other users: " + "; ".join(bad[:3]) + f"{more}; `chmod o-rw` closes each"
        )
    return f"{looked} paths (the state dir and its entries, secrets, store, logs) closed to other users"


# --- secrets in logs, process arguments and reports -----------------------------------------


def secret_forms(secrets: Iterable[str]) -> list[bytes]:
    forms = {form for s in secrets if s and len(s) >= MIN_SECRET for form in (s, quote(s, safe=""))}
    return sorted((f.encode() for f in forms), key=len, reverse=True)


def _report_files(roots: list[Path]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            files += [p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file() and not p.is_symlink()]
        if len(files) >= WALK_FILES:
            return files[:WALK_FILES]
    return files


def _first_hit(path: Path, forms: list[bytes], budget: list[int]) -> int | None:
    """The line number of the first secret in path; budget[0] = bytes still allowed to read."""
    try:
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                budget[0] -= len(line)
                if any(form in line for form in forms):
                    return number
                if budget[0] <= 0:
                    return None
    except OSError:
        return None
    return None


def _argv_of(local: Local) -> list[tuple[int, str]]:
    procs: list[psutil.Process] = []
    if local.server_pgid is not None:
        procs += group_members(local.server_pgid)
    if local.pg and local.pg.postmaster_pid:
        try:
            postmaster = psutil.Process(local.pg.postmaster_pid)
            procs += [postmaster, *postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    found = []
    for proc in procs:
        try:
            found.append((proc.pid, "\0".join(proc.cmdline())))
        except psutil.Error:
            continue
    return found


def check_secrets(target: Target) -> str:
    local = target.local
    if local is None:
        raise CheckSkipped("no local logs, processes or reports to look in (only the configured deployment's)")
    forms = secret_forms(target.secrets)
    if not forms:
        raise CheckSkipped("no configured secret to look for")
    hits, budget = [], [SCAN_BYTES]
    files = [p for p in local.logs if p.is_file()] + _report_files(local.report_roots)
    for path in files:
        line = _first_hit(path, forms, budget)
        if line is not None:
            hits.append(f"{path} line {line}")
    argv = _argv_of(local)
    for pid, command in argv:
        if any(form.decode() in command for form in forms):
            hits.append(f"the command line of pid {pid}")
    if hits:
        raise CheckFailed("a configured secret appears in " + ", ".join(hits[:4]) + (" ..." if len(hits) > 4 else ""))
    cut = " (stopped at the 1 GiB read limit)" if budget[0] <= 0 else ""
    count = len({s for s in target.secrets if s and len(s) >= MIN_SECRET})
    return (
        f"{count} configured secret(s) absent from {len(files)} log and report file(s) "
        f"and the arguments of {len(argv)} process(es){cut}"
    )
