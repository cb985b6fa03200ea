"""The Docker engine: a private dockerd of ours under the state dir, or one that already answers.

Ours runs as root with every path of its own (socket, data root = the image cache, exec root,
pid file) under `engine.dir` (default <state_dir>/engine), so it never touches
/var/run/docker.sock or another engine's files. Its network plumbing is ours too: a bridge we
create (`mlops-<hash of the dir>`) on a free /20 of `engine.network` (the bridge gets the first
/24, Compose networks the rest), so two private engines on one host never share docker0 or a
subnet. It runs with `--iptables=false --ip-forward=false`: dockerd changes no firewall rule, no
FORWARD policy, no br_netfilter setting and no sysctl of the host (a stock dockerd sets FORWARD to
DROP, which breaks every other bridge on the machine). Published ports still work (docker-proxy
listens on the host and connects to the container), containers reach each other on their
networks, and image builds use the host's network; containers themselves have no way out.

dockerd runs as a ManagedProcess (core.managed): a process group we start, wait for and stop.
Stopping ours removes its containers and networks first (volumes and images stay in the data
root), then dockerd, then whatever a dead dockerd left behind: its containerd, the shims and
container processes named by its exec root, mounts under its folders (leftovers.py), its bridges
(bridge.py, which also makes ours).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import psutil
from docker.errors import DockerException

from tasks.libs.core.errors import UserError
from tasks.libs.core.managed import Launch, ManagedProcess, group_of
from tasks.libs.core.processes import ProcessRecord, stop_group
from tasks.libs.core.programs import find_program
from tasks.libs.core.settings import Settings
from tasks.libs.core.waits import wait_until
from tasks.libs.engine.bridge import bridges_in, delete_link, link_exists, make_bridge
from tasks.libs.engine.leftovers import kill_exec_root_processes, unmount_under

DEFAULT_SOCKET = "/var/run/docker.sock"
API_TIMEOUT = 120
INSTALL = "`inv deps --docker` (Debian packages docker.io and mmdebstrap)"


@dataclass
class EngineRecord(ProcessRecord):
    """The pid file of our dockerd: its identity, and the plumbing it was started with."""

    socket: str = ""
    bridge: str = ""
    gateway: str = ""  # the bridge's address, e.g. 10.213.16.1/24
    block: str = ""  # the /20 of engine.network the engine took
    exec_root: str = ""


@dataclass(frozen=True)
class EngineInfo:
    """An engine that answers: where, whether we started it, and its record when ours."""

    host: str
    ours: bool
    record: EngineRecord | None = None

    @property
    def export(self) -> str:
        return f"export DOCKER_HOST={self.host}"


# --- where ----------------------------------------------------------------------------


def engine_dir(settings: Settings) -> Path:
    configured = settings.engine.dir
    return Path(configured).expanduser() if configured else settings.state_path / "engine"


def socket_path(settings: Settings) -> Path:
    return engine_dir(settings) / "docker.sock"


def bridge_name(settings: Settings) -> str:
    """A name of our own per engine dir (at most 15 characters, the kernel's limit)."""
    digest = hashlib.sha256(str(engine_dir(settings).resolve()).encode()).hexdigest()
    return f"mlops-{digest[:8]}"


def managed(settings: Settings) -> ManagedProcess[EngineRecord]:
    folder = engine_dir(settings)
    return ManagedProcess(
        "dockerd",
        pid_file=folder / "engine.pid",
        log_file=folder / "dockerd.log",
        record=EngineRecord,
        grace=settings.engine.stop_timeout,
    )


# --- which engine ---------------------------------------------------------------------


def answers(host: str, timeout: float = 5) -> str | None:
    """None when the engine at host answers a ping, else why not (one line)."""
    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=timeout)
    except DockerException as exc:
        return _first_line(exc)
    try:
        client.ping()
        return None
    except DockerException as exc:
        return _first_line(exc)
    finally:
        client.close()


def ours_running(settings: Settings) -> EngineRecord | None:
    """Our dockerd's record while dockerd itself lives. The pid file of a dead one is kept: it names
    the exec root, bridge and block whose leftovers start and stop remove."""
    process = managed(settings)
    record = process.record()
    if record is None or not process.leader_alive(record):
        return None
    return record


def other_engine(settings: Settings) -> str | None:
    """The address of an engine we may use without starting one: DOCKER_HOST, else the default socket."""
    if not settings.engine.adopt:
        return None
    host = os.environ.get("DOCKER_HOST")
    if host and host != f"unix://{socket_path(settings)}":
        return host
    if os.path.exists(DEFAULT_SOCKET):
        return f"unix://{DEFAULT_SOCKET}"
    return None


def current(settings: Settings) -> EngineInfo | None:
    """The engine the tool uses now: ours while it runs, else one that answers (engine.adopt)."""
    record = ours_running(settings)
    if record is not None:
        return EngineInfo(f"unix://{record.socket}", True, record)
    host = other_engine(settings)
    if host and answers(host) is None:
        return EngineInfo(host, False)
    return None


def client_factory(settings: Settings) -> Callable[[], docker.DockerClient]:
    """What docker.from_env() is for docker-py: a client of the engine the tool uses, raising
    DockerException (as docker-py does) when none answers."""

    def make() -> docker.DockerClient:
        info = current(settings)
        if info is None:
            where = other_engine(settings) or f"unix://{socket_path(settings)}"
            raise DockerException(f"nothing answers at {where}; start one with `inv engine.start`")
        return docker.DockerClient(base_url=info.host, version="auto", timeout=API_TIMEOUT)

    return make


def client(settings: Settings) -> tuple[docker.DockerClient, EngineInfo]:
    """A client of the engine in use, or a one-line UserError."""
    info = current(settings)
    if info is None:
        where = other_engine(settings) or f"unix://{socket_path(settings)}"
        raise UserError(f"no Docker engine answers at {where}; start one with `inv engine.start`")
    return docker.DockerClient(base_url=info.host, version="auto", timeout=API_TIMEOUT), info


# --- start ----------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One start or stop of this engine dir at a time (two test sessions, a user and a test)."""
    folder = engine_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / "engine.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start(settings: Settings, say: Callable[[str], None] = print) -> EngineInfo:
    """Ours if it runs; else an engine that answers (engine.adopt); else start ours."""
    with _locked(settings):
        record = ours_running(settings)
        if record is not None:
            problem = answers(f"unix://{record.socket}")
            if problem is None:
                say(f"our Docker engine already runs (pid {record.pid})")
                return EngineInfo(f"unix://{record.socket}", True, record)
            say(f"our dockerd (pid {record.pid}) does not answer ({problem}); restarting it")
            _stop_ours(settings, record, say)
        else:
            leftover = managed(settings).record()
            if leftover is not None:  # dockerd died: its containerd, shims or bridge may remain
                _clean_leftovers(settings, leftover, say)
        host = other_engine(settings)
        if host and answers(host) is None:
            say(f"a Docker engine already answers at {host}: using it (not ours: engine.stop leaves it alone)")
            return EngineInfo(host, False)
        return _start_ours(settings, say)


def _start_ours(settings: Settings, say: Callable[[str], None]) -> EngineInfo:
    dockerd = find_program("dockerd")
    if dockerd is None:
        raise UserError(f"dockerd is not installed: {INSTALL}")
    if find_program("ip") is None:
        raise UserError("the ip program is missing: apt-get install iproute2")
    if os.geteuid() != 0:
        raise UserError("a private Docker engine needs root (dockerd, a bridge); run as root or start Docker yourself")
    folder = engine_dir(settings)
    sock = socket_path(settings)
    if sock.exists():
        sock.unlink()  # a socket file left by a dead dockerd of ours
    bridge, gateway, block = make_bridge(bridge_name(settings), settings.engine.network)
    exec_root = _exec_root(settings)
    command = [
        dockerd,
        "--host",
        f"unix://{sock}",
        "--data-root",
        str(folder / "data"),
        "--exec-root",
        exec_root,
        "--pidfile",
        str(folder / "dockerd.pid"),
        "--bridge",
        bridge,
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--default-address-pool",
        f"base={block},size=24",
        "--log-level",
        "warn",
    ]
    # dockerd as a service runs with umask 022; the one of managed processes (0077) would make
    # folders it creates for containers (volumes, /run) unreadable to a container's own user.
    launch = Launch(
        command=["/bin/sh", "-c", 'umask 022; exec "$@"', "dockerd", *command],
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        cwd=folder,
        ready=lambda: answers(f"unix://{sock}", timeout=3),
        timeout=settings.engine.start_timeout,
        fields={"socket": str(sock), "bridge": bridge, "gateway": gateway, "block": block, "exec_root": exec_root},
        log_lines=10,
    )
    try:
        record = managed(settings).start(launch)
    except UserError:
        delete_link(bridge)
        raise
    say(f"started a private Docker engine (pid {record.pid}), bridge {bridge} {gateway}, data in {folder / 'data'}")
    return EngineInfo(f"unix://{sock}", True, record)


def _exec_root(settings: Settings) -> str:
    """The exec root holds containerd's socket, whose path must stay under 108 bytes (sun_path):
    a deep state dir gets a short folder in /run named after it instead."""
    path = engine_dir(settings) / "exec"
    if len(str(path / "containerd" / "containerd-debug.sock")) < 100:
        return str(path)
    digest = hashlib.sha256(str(engine_dir(settings).resolve()).encode()).hexdigest()[:12]
    return f"/run/mlflow-ops-engine-{digest}"


# --- stop -----------------------------------------------------------------------------


def stop(settings: Settings, say: Callable[[str], None] = print) -> str:
    """Stop our engine with its containers; an engine we did not start is left alone."""
    with _locked(settings):
        record = ours_running(settings)
        if record is None:
            leftover = managed(settings).record()
            if leftover is not None:
                _clean_leftovers(settings, leftover, say)
                return "our Docker engine was not running; removed what it had left behind"
            host = other_engine(settings)
            if host and answers(host) is None:
                return f"no engine of ours runs; the one at {host} is not ours: left running"
            return "no engine of ours runs"
        return _stop_ours(settings, record, say)


def _stop_ours(settings: Settings, record: EngineRecord, say: Callable[[str], None]) -> str:
    removed = _remove_containers_and_networks(settings, record)
    if removed:
        say(removed)
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)  # dockerd stops its containerd itself
    exited = wait_until(
        lambda: not psutil.pid_exists(record.pid) or _zombie(record.pid), timeout=settings.engine.stop_timeout
    )
    if _group_alive(record):
        stop_group(record.pgid, grace=5)  # whatever of the group is left (SIGKILL after the grace)
    _clean_leftovers(settings, record, say)
    how = "terminated" if exited else "killed after the grace period"
    return f"stopped our Docker engine (pid {record.pid}, {how})"


def _remove_containers_and_networks(settings: Settings, record: EngineRecord) -> str:
    try:
        api = docker.DockerClient(base_url=f"unix://{record.socket}", version="auto", timeout=API_TIMEOUT)
        containers = api.containers.list(all=True)
        for container in containers:
            with contextlib.suppress(DockerException):
                if container.status in ("running", "restarting", "paused"):
                    container.stop(timeout=int(settings.engine.stop_timeout))
                container.remove(force=True)
        networks = [n for n in api.networks.list() if n.name not in ("bridge", "host", "none")]
        for network in networks:
            with contextlib.suppress(DockerException):
                network.remove()
        api.close()
    except DockerException:
        return ""
    parts = []
    if containers:
        parts.append(f"{len(containers)} container(s)")
    if networks:
        parts.append(f"{len(networks)} network(s)")
    return f"removed {' and '.join(parts)} of our engine" if parts else ""


def _clean_leftovers(settings: Settings, record: EngineRecord, say: Callable[[str], None]) -> None:
    """What a dead (or stopped) dockerd of ours may leave: its group (containerd), the shims and
    container processes of its exec root, mounts under its folders, its bridges."""
    if _group_alive(record):
        stop_group(record.pgid, grace=5)
    exec_root = record.exec_root or _exec_root(settings)
    killed = kill_exec_root_processes(exec_root)
    unmounted = unmount_under([engine_dir(settings), Path(exec_root)])
    links = [record.bridge] if record.bridge and link_exists(record.bridge) else []
    if record.block:
        links += [b for b in bridges_in(record.block) if b not in links]
    for link in links:
        delete_link(link)
    (engine_dir(settings) / "engine.pid").unlink(missing_ok=True)
    (engine_dir(settings) / "dockerd.pid").unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path(settings).unlink()
    done = [f"{killed} leftover process(es)" if killed else "", f"{unmounted} mount(s)" if unmounted else ""]
    done += [f"bridge {link}" for link in links]
    if any(done):
        say("removed what our engine left behind: " + ", ".join(d for d in done if d))


def _group_alive(record: EngineRecord) -> bool:
    return bool(group_of(record))


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- status ---------------------------------------------------------------------------


def status(settings: Settings) -> dict:
    """What runs: ours (pid, socket, bridge, counts), or another engine that answers, or nothing."""
    record = ours_running(settings)
    if record is not None:
        host = f"unix://{record.socket}"
        out: dict = {"engine": "ours", "pid": record.pid, "DOCKER_HOST": host, "bridge": record.bridge}
        out.update({"gateway": record.gateway, "networks": record.block, "data": str(engine_dir(settings) / "data")})
        problem = answers(host)
        out["answers"] = problem or "yes"
        if problem is None:
            api = docker.DockerClient(base_url=host, version="auto", timeout=API_TIMEOUT)
            info = api.info()
            out.update({"version": info.get("ServerVersion"), "containers": info.get("Containers")})
            out.update({"running": info.get("ContainersRunning"), "images": info.get("Images")})
            api.close()
        return out
    other = other_engine(settings)
    if other and answers(other) is None:
        return {"engine": "not ours", "DOCKER_HOST": other}
    return {"engine": None}


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
