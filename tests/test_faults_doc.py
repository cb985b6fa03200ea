"""docs/faults.md stays true: the tests it names exist, and it names every `faults` test."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from tasks.settings import PROJECT_ROOT

pytestmark = pytest.mark.faults

DOC = PROJECT_ROOT / "docs" / "faults.md"
NODE = re.compile(r"`(tests/[\w/]+\.py::\w+)`")


def named_tests() -> set[str]:
    return set(NODE.findall(DOC.read_text()))


def test_every_named_test_exists():
    named = named_tests()
    assert len(named) >= 20
    missing = []
    for node in sorted(named):
        path, func = node.split("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        if not callable(getattr(module, func, None)) or not func.startswith("test_"):
            missing.append(node)
    assert missing == [], f"docs/faults.md names tests that do not exist: {missing}"


def test_every_faults_test_is_in_the_table():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "faults",
                           "-p", "no:cacheprovider", "tests"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert len(collected) >= 15
    missing = sorted(collected - named_tests())
    assert missing == [], f"marked faults but not in docs/faults.md: {missing}"
