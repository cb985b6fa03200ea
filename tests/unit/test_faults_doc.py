"""docs/faults.md stays true: the tests it names exist, and it names every test in tests/faults/."""

from __future__ import annotations

import ast
import re

from tasks.libs.core.settings import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "faults.md"
NODE = re.compile(r"`(tests/[\w/]+\.py::\w+)`")


def named_tests() -> set[str]:
    return set(NODE.findall(DOC.read_text()))


def _test_names_in(path) -> set[str]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PROJECT_ROOT)
    return {
        f"{rel}::{node.name}"
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_named_test_exists():
    named = named_tests()
    assert len(named) >= 20
    existing = {test for path in (PROJECT_ROOT / "tests").rglob("test_*.py") for test in _test_names_in(path)}
    assert sorted(named - existing) == [], "docs/faults.md names tests that do not exist"


def test_every_faults_test_is_in_the_table():
    faults = {test for path in (PROJECT_ROOT / "tests" / "faults").glob("test_*.py") for test in _test_names_in(path)}
    assert len(faults) >= 15
    assert sorted(faults - named_tests()) == [], "tests in tests/faults/ that docs/faults.md does not name"
