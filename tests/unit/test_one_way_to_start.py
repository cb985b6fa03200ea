"""One way to run a background process: only core.managed calls start_group.

Seven copies of start-probe-stop drifted apart before (a replica was running while any process of
its group lived, the server only while its first did); a new caller goes through ManagedProcess.
"""

from __future__ import annotations

import ast

from tasks.libs.core.settings import PROJECT_ROOT

ALLOWED = {"tasks/libs/core/managed.py"}


def _uses_start_group(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(alias.name == "start_group" for alias in node.names):
            return True
        if isinstance(node, ast.Name) and node.id == "start_group":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "start_group":
            return True
    return False


def test_only_core_managed_calls_start_group():
    sources = [*(PROJECT_ROOT / "tasks").rglob("*.py"), PROJECT_ROOT / "tasks.py"]
    assert len(sources) > 50
    users = {str(path.relative_to(PROJECT_ROOT)) for path in sources if _uses_start_group(ast.parse(path.read_text()))}
    assert users == ALLOWED, "start a background process with core.managed.ManagedProcess, not start_group"
