"""full-check and bench run the same server as `inv server.start --backend B`: each backend's own
layered settings, not one backend's settings with the name flipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.libs.bench.cluster import cluster_bench_settings
from tasks.libs.bench.runner import bench_settings
from tasks.libs.core.settings import Settings
from tasks.libs.pipeline.full_check import isolated_settings
from tasks.libs.server.command import server_command, server_env
from tests.support.settings import make_settings

BACKENDS = ("sqlite", "postgres")


def comparable(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """The server's argv and the MLFLOW_* environment it gets, ports, paths and the store aside."""
    state, port = str(settings.state_path), str(settings.server.port)
    argv = [arg.replace(state, "<state>").replace(port, "<port>") for arg in server_command(settings)]
    env = {k: v for k, v in server_env(settings).items() if k.startswith("MLFLOW_") and k != "MLFLOW_BACKEND_STORE_URI"}
    return argv, env


@pytest.fixture
def per_backend(tmp_path: Path) -> dict[str, Settings]:
    # what `inv server.start --backend B` loads (the flag picks the backend layer)
    return {b: make_settings(tmp_path, backend=b, **{"postgres.password": "pw"}) for b in BACKENDS}


def test_the_backend_layers_differ_so_this_test_can_fail(per_backend):
    assert comparable(per_backend["sqlite"]) != comparable(per_backend["postgres"])


def test_full_check_runs_what_server_start_runs(per_backend):
    isolated = isolated_settings(per_backend)
    for backend in BACKENDS:
        assert isolated[backend].backend == backend
        assert comparable(isolated[backend]) == comparable(per_backend[backend])


def test_bench_tuned_server_runs_what_server_start_runs(per_backend, tmp_path):
    for backend in BACKENDS:
        bench = bench_settings(per_backend[backend], tmp_path / f"bench-{backend}", "pw", database="db")
        assert bench.backend == backend
        assert comparable(bench) == comparable(per_backend[backend])


def test_cluster_bench_runs_the_bench_settings_with_every_listener_on_a_port_of_its_own(per_backend, tmp_path):
    s = cluster_bench_settings(per_backend["sqlite"], tmp_path / "cluster", "pw", 45000, "db", 3)
    assert s.backend == "postgres" and s.postgres.port == 45000 and s.postgres.provider == "local"
    c = s.cluster
    ports = [s.server.port, s.postgres.port, s.artifacts.s3.port, s.artifacts.artifacts_server.port]
    ports += [c.first_port + i for i in range(c.replicas)]
    ports += [c.lb.port, c.lb.stats_port, c.pgbouncer.port, c.read_replica.port, c.redis.port]
    assert len(set(ports)) == len(ports) == 12, ports
