"""`inv engine.*` and the user's mistakes around an engine, through the CLI.

One test starts a SECOND private engine beside the session's: its own folder, bridge and /20, so
the two never share docker0 or a subnet; it then kills that dockerd in the middle of `deploy.up`
and checks the one line the user gets, and that `engine.stop` removes what the dead engine left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from tasks.libs.core.settings import load_settings
from tasks.libs.core.waits import wait_until
from tasks.libs.engine import daemon
from tests.support.cli import hermetic_env, inv, inv_popen
from tests.support.settings import make_state_dir

pytestmark = [pytest.mark.engine, pytest.mark.integration]


def _one_line(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def _bridges() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def test_a_second_engine_has_its_own_bridge_and_one_dying_mid_up_is_one_clear_line(engine, debian_base):
    state = make_state_dir()
    engine_dir = state / "engine2"
    env = hermetic_env(state, engine__dir=str(engine_dir), engine__adopt="false", engine__up_timeout="120")
    settings = load_settings(environ=env, local_file=False).settings
    try:
        done = inv("engine.start", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"DOCKER_HOST=unix://{engine_dir}/docker.sock" in done.stdout
        status = inv("engine.status", env=env)
        assert status.returncode == 0 and "engine: ours" in status.stdout, status.stdout + status.stderr
        record = daemon.ours_running(settings)
        session = engine.info.record
        assert record and session and record.bridge != session.bridge and record.block != session.block
        assert record.bridge in _bridges()

        # A project whose service never gets healthy keeps `up` waiting; then its engine dies.
        client, _ = daemon.client(settings)
        tarball = next((daemon.engine_dir(engine.settings) / "cache").glob("debian-*.tar"))
        client.api.import_image_from_file(str(tarball), repository="waits", tag="forever")
        project = state / "project"
        project.mkdir()
        health = {"test": ["CMD", "false"], "interval": "2s", "retries": 1000}
        app = {"image": "waits:forever", "command": ["sleep", "600"], "healthcheck": health}
        doc = {"name": "waits", "services": {"app": app}}
        (project / "docker-compose.yaml").write_text(yaml.safe_dump(doc))
        up = inv_popen("deploy.up", str(project), env=env)
        assert wait_until(lambda: bool(client.containers.list(filters={"name": "waits-app"})), timeout=120)
        os.kill(record.pid, signal.SIGKILL)
        out, err = up.communicate(timeout=180)
        lines = err.strip().splitlines()
        assert up.returncode == 1 and len(lines) == 1, out + err
        assert lines[0].startswith(f"error: the Docker engine at unix://{engine_dir}/docker.sock stopped answering")

        # engine.stop of a dead engine removes its containerd, shims, container, mounts and bridge.
        done = inv("engine.stop", env=env)
        assert done.returncode == 0 and "left behind" in done.stdout, done.stdout + done.stderr
        marker = str(engine_dir)
        left = [p for p in psutil.process_iter(["cmdline"]) if any(marker in a for a in p.info["cmdline"] or [])]
        assert left == []
        assert record.bridge not in _bridges()
        assert marker not in Path("/proc/self/mountinfo").read_text()
        assert inv("engine.status", env=env).returncode == 3
        assert "no engine of ours runs" in inv("engine.stop", env=env).stdout
    finally:
        inv("engine.stop", env=env)
        shutil.rmtree(state, ignore_errors=True)


def test_deploy_commands_without_an_engine_or_a_project_say_so_in_one_line(tmp_path):
    state = make_state_dir()
    env = hermetic_env(state, engine__dir=str(state / "no-engine"), engine__adopt="false")
    try:
        assert inv("deploy.compose", "--out", str(tmp_path / "p"), env=env).returncode == 0
        line = _one_line(inv("deploy.up", str(tmp_path / "p"), env=env))
        assert (
            line
            == f"error: no Docker engine answers at unix://{state}/no-engine/docker.sock; start one with `inv engine.start`"
        )
        line = _one_line(inv("deploy.up", str(tmp_path / "missing"), env=env))
        assert line.startswith(f"error: {tmp_path / 'missing'} is not a folder")
        assert _one_line(inv("engine.status", env=env)).startswith("no Docker engine runs")
        line = _one_line(inv("db.start", "--provider", "docker", env=env))
        assert "no Docker engine answers" in line and "inv engine.start" in line
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_deploy_up_on_a_busy_port_names_its_holder_and_starts_nothing(engine, tmp_path):
    state = make_state_dir()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    env = hermetic_env(
        state,
        server__port=str(port),
        deploy__name="mlops-busy",
        **{k.removeprefix("MLFLOW_OPS_").lower(): v for k, v in engine.env.items()},
    )
    try:
        assert inv("deploy.compose", "--out", str(tmp_path / "p"), env=env).returncode == 0
        line = _one_line(inv("deploy.up", str(tmp_path / "p"), env=env))
        assert line.startswith(f"error: port {port} on 127.0.0.1 is in use by pid {os.getpid()}")
        assert engine.client.containers.list(all=True, filters={"label": "com.docker.compose.project=mlops-busy"}) == []
    finally:
        holder.close()
        shutil.rmtree(state, ignore_errors=True)
