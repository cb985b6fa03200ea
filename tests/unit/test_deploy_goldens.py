"""Golden files: each format from the ci and prod profiles (and ci on PostgreSQL), byte for byte.

Regenerate after an intended change with MLFLOW_OPS_UPDATE_GOLDENS=1 and read the diff.
"""

from __future__ import annotations

import pytest

from tasks.libs.core.errors import ConfigError
from tasks.libs.deploy.writer import export, render
from tests.support.deploy import GOLDEN_CASES, GOLDEN_DIR, golden_settings, read_tree, updating_goldens, write_tree

CASES = [
    (case, fmt)
    for case in GOLDEN_CASES
    for fmt in ("compose", "helm", "systemd")
    if (case, fmt) != ("ci-postgres", "helm")
]


@pytest.mark.parametrize(("case", "fmt"), CASES)
def test_output_matches_the_golden_files(case, fmt):
    files = render(golden_settings(case), fmt, GOLDEN_CASES[case][0])
    folder = GOLDEN_DIR / case / fmt
    if updating_goldens():
        write_tree(folder, files)
    assert folder.is_dir(), f"no goldens in {folder}: run with MLFLOW_OPS_UPDATE_GOLDENS=1"
    assert files == read_tree(folder)


def test_ci_on_postgres_is_refused_for_helm_since_pods_cannot_reach_this_machine():
    with pytest.raises(ConfigError, match=r"^cannot export helm: postgres.provider runs PostgreSQL on this machine"):
        render(golden_settings("ci-postgres"), "helm", "ci")


@pytest.mark.parametrize("fmt", ["compose", "helm", "systemd"])
def test_writing_twice_gives_byte_identical_files(fmt, tmp_path):
    settings = golden_settings("prod")
    first = export(settings, fmt, profile="prod", out=tmp_path / "a", write_secrets=False)
    second = export(settings, fmt, profile="prod", out=tmp_path / "b", write_secrets=False)
    assert first.files == second.files
    for name in first.files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
