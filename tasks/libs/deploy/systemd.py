"""systemd: the server unit, a gc service and timer, the environment file's example, the auth ini.

ExecStart= is exactly what `inv server.start` runs (tasks.libs.deploy.process, systemd placement:
the same Python, state dir, host and port); its environment is the Environment= lines plus the
EnvironmentFile= holding the secrets (mode 0600, written only with --write-secrets).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.libs.core.errors import UserError
from tasks.libs.core.settings import Settings
from tasks.libs.core.tls import tls_files
from tasks.libs.deploy import facts
from tasks.libs.deploy.process import (
    SECRET_VARS,
    SECRET_WHAT,
    Env,
    Process,
    SecretRef,
    gc_process,
    placed_ca,
    server_process,
    systemd_placement,
)

# Characters that need no quoting in an ExecStart= word (systemd.service(5), "Command lines").
_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=/.,:@")
HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=read-only",  # a venv under /root or /home stays readable
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "UMask=0077",  # as server.start: what the server writes is its user's alone
)
LIMITS = (
    "one unit runs one server: for deploy.replicas > 1 run it on that many hosts behind your load balancer",
    "TLS: a reverse proxy on this host terminates it for deploy.public_host and forwards to server.host:server.port",
)


def limits(settings: Settings) -> list[str]:
    """What a unit cannot do for you; with server.tls, where uvicorn's certificate and key go."""
    if not settings.server.tls.enabled:
        return list(LIMITS)
    placement = systemd_placement(settings)
    cert, key = (placement.tls[0], placement.tls[1]) if placement.tls else tls_paths(settings)
    user = settings.deploy.systemd.user
    return [
        LIMITS[0],
        f"TLS: uvicorn serves it; install the certificate as {cert} and its key as {key}\n"
        f"  (chown {user}, chmod 600; `--write-secrets` writes the tool's own in tls/); clients trust "
        f"{placed_ca(settings, placement) or 'the system trust store'}",
    ]


def tls_paths(settings: Settings) -> tuple[str, str]:
    files = tls_files(settings)
    return str(files.cert), str(files.key)


def exec_arg(arg: str) -> str:
    """One argv word for ExecStart=: `%` starts a specifier and `$` a variable, so both are doubled;
    a word with anything outside a plain set is double-quoted with C escapes."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and set(arg) <= _PLAIN | {"%", "$"}:
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_words(line: str) -> list[str]:
    """The argv systemd reads from an ExecStart= value written by exec_arg (its inverse)."""
    words: list[str] = []
    i = 0
    while i < len(line):
        if line[i].isspace():
            i += 1
            continue
        word = []
        if line[i] == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                word.append(line[i])
                i += 1
            i += 1
        else:
            while i < len(line) and not line[i].isspace():
                word.append(line[i])
                i += 1
        words.append("".join(word).replace("%%", "%").replace("$$", "$"))
    return words


def env_assignment(key: str, value: str) -> str:
    """Environment= takes specifiers (so `%%`) but expands no `$`; the pair is quoted."""
    pair = f"{key}={value}".replace("%", "%%")
    return 'Environment="' + pair.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_file_line(key: str, value: str) -> str:
    """A line of the EnvironmentFile: single quotes keep every other character literal."""
    if "'" in value or "\n" in value:
        raise UserError(f"the value of {key} holds ' or a newline, which an EnvironmentFile cannot carry; change it")
    return f"{key}='{value}'\n"


def systemd_files(settings: Settings, profile: str) -> dict[str, str]:
    name = settings.deploy.name
    server = server_process(settings, systemd_placement(settings))
    files = {f"{name}.service": server_unit(settings, profile, server)}
    gc = gc_unit_process(settings)
    secret_vars = sorted({k for p in (server, gc) if p for k, v in p.env.items() if isinstance(v, SecretRef)})
    files[f"{name}.env.example"] = env_example(settings, secret_vars)
    if settings.server.auth.enabled:
        files["basic_auth.ini"] = facts.auth_ini(settings, systemd_placement(settings))
    if gc is not None:
        files[f"{name}-gc.service"] = gc_unit(settings, profile, gc)
        files[f"{name}-gc.timer"] = gc_timer(settings, profile)
    return files


def gc_unit_process(settings: Settings) -> Process | None:
    if not settings.deploy.gc.enabled:
        return None
    tracking = settings.server.url if facts.gc_needs_server(settings) else None
    return gc_process(settings, systemd_placement(settings), tracking_uri=tracking)


def env_file_path(settings: Settings) -> str:
    return f"{settings.deploy.systemd.config_dir}/{settings.deploy.name}.env"


def _header(settings: Settings, profile: str, what: str) -> list[str]:
    return [
        f"# {what}. Generated by mlflow-ops from profile {profile!r}; re-run `inv deploy.systemd`",
        f"# instead of editing. Secrets: {env_file_path(settings)} (mode 0600), never this file.",
    ]


def _service_common(settings: Settings, env: Env) -> list[str]:
    user = settings.deploy.systemd.user
    return [
        f"User={user}",
        f"Group={user}",
        f"WorkingDirectory={settings.state_path}",
        f"EnvironmentFile={env_file_path(settings)}",
        *[env_assignment(k, v) for k, v in env.items() if not isinstance(v, SecretRef)],
    ]


def _writable(settings: Settings) -> list[str]:
    paths = [str(settings.state_path)]
    if settings.backend == "sqlite" and not settings.sqlite_file.is_relative_to(settings.state_path):
        paths.append(str(settings.sqlite_file.parent))
    return [f"ReadWritePaths={' '.join(paths)}"]


def pre_start(settings: Settings, server: Process) -> list[list[str]]:
    """What runs before the server, as Compose's one-shots do: WAL for SQLite (server.start sets
    it), an empty Prometheus folder, then the schema migrations (`mlflow db upgrade URL`, the auth
    app's own)."""
    python = server.argv[0]
    store = server.env["MLFLOW_BACKEND_STORE_URI"]
    assert isinstance(store, str)
    steps = []
    if settings.backend == "sqlite" and settings.sqlite.wal:
        path = store.removeprefix("sqlite:///")
        steps.append([python, "-c", f"import sqlite3; sqlite3.connect('{path}').execute('PRAGMA journal_mode=WAL')"])
    if "--expose-prometheus" in server.argv:
        # Counters of earlier processes would be summed into the new ones; server.start empties it too.
        folder = server.argv[server.argv.index("--expose-prometheus") + 1]
        steps.append([python, "-c", f"import shutil; shutil.rmtree('{folder}', ignore_errors=True)"])
    steps.append([python, "-m", "mlflow", "db", "upgrade", store])
    if facts.auth_on_postgres(settings):
        auth_uri = facts.auth_database_uri(settings, systemd_placement(settings))
        steps.append([python, "-m", "mlflow.server.auth", "db", "upgrade", "--url", auth_uri])
    return steps


def server_unit(settings: Settings, profile: str, server: Process) -> str:
    lines = [
        *_header(settings, profile, f"MLflow {facts.MLFLOW_VERSION} tracking server"),
        "# Runs what `inv server.start` runs for the same settings. What a unit cannot do for you:",
        *[f"# {'- ' if i == 0 else ''}{line}" for item in limits(settings) for i, line in enumerate(item.split("\n"))],
        "[Unit]",
        f"Description=MLflow tracking server ({settings.deploy.name}, profile {profile})",
        f"After={' '.join(_after(settings))}",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        *_service_common(settings, server.env),
        *["ExecStartPre=" + " ".join(exec_arg(a) for a in step) for step in pre_start(settings, server)],
        "ExecStart=" + " ".join(exec_arg(a) for a in server.argv),
        "Restart=on-failure",
        "RestartSec=5s",
        f"TimeoutStopSec={int(settings.server.stop_grace)}s",  # then SIGKILL, as server.stop does
        "KillMode=control-group",  # SIGTERM to every process of the unit, like stop_group
        *_resources(settings),
        *HARDENING,
        *_writable(settings),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _after(settings: Settings) -> list[str]:
    """A PostgreSQL on this very host starts before the server and stops after it. Without it, systemd
    started and stopped both at once (seen under a real systemd: db upgrade's first connection raced
    the cluster's start at boot, and PostgreSQL went down while the server still answered at
    shutdown). Debian's postgresql.service is ordered after every postgresql@<version>-<cluster>."""
    db = facts.database(settings)
    local_db = db is not None and db.host in LOOPBACK
    return ["network-online.target", *(["postgresql.service"] if local_db else [])]


def _resources(settings: Settings) -> list[str]:
    limits = settings.deploy.resources.limits
    out = []
    memory = limits.get("memory")
    if memory:
        for suffix in ("Ki", "Mi", "Gi", "Ti"):  # systemd's K, M, G, T are powers of 1024 too
            memory = memory.removesuffix(suffix) + suffix[0] if memory.endswith(suffix) else memory
        out.append(f"MemoryMax={memory}")
    cpu = limits.get("cpu")
    if cpu:
        percent = int(cpu[:-1]) / 10 if cpu.endswith("m") else float(cpu) * 100
        out.append(f"CPUQuota={percent:g}%")
    return out


def gc_unit(settings: Settings, profile: str, gc: Process) -> str:
    name = settings.deploy.name
    lines = [
        *_header(settings, profile, "Garbage collection of deleted runs and experiments (mlflow gc)"),
        "[Unit]",
        f"Description=MLflow garbage collection ({name})",
        f"After={name}.service",
        "",
        "[Service]",
        "Type=oneshot",
        *_service_common(settings, gc.env),
        "ExecStart=" + " ".join(exec_arg(a) for a in gc.argv),
        *HARDENING,
        *_writable(settings),
    ]
    return "\n".join(lines) + "\n"


def gc_timer(settings: Settings, profile: str) -> str:
    name = settings.deploy.name
    lines = [
        *_header(settings, profile, "When mlflow gc runs"),
        "[Unit]",
        f"Description=Run mlflow gc for {name}",
        "",
        "[Timer]",
        f"OnCalendar={settings.deploy.gc.on_calendar}",
        "RandomizedDelaySec=15min",
        "Persistent=true",
        f"Unit={name}-gc.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return "\n".join(lines) + "\n"


def env_example(settings: Settings, secret_vars: list[str]) -> str:
    path = PurePosixPath(env_file_path(settings))
    lines = [
        f"# {path}: the secrets of {settings.deploy.name}.service; mode 0600, owner root (systemd reads it",
        f"# before it switches to {settings.deploy.systemd.user}). `inv deploy.systemd --write-secrets` writes it",
        "# from the state dir's secrets. Values in single quotes.",
    ]
    for var in secret_vars:
        lines += [f"# {SECRET_WHAT[SECRET_VARS[var]]}", f"{var}="]
    return "\n".join(lines) + "\n"


def env_file(server_and_gc_vars: list[str], values: dict[str, str]) -> str:
    """The EnvironmentFile with its values (--write-secrets)."""
    return "".join(env_file_line(var, values[SECRET_VARS[var]]) for var in server_and_gc_vars)
