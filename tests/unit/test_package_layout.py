"""Every folder of code is a regular package, so editors and type checkers resolve `tasks.libs...`."""

from __future__ import annotations

from tasks.libs.core.settings import PROJECT_ROOT


def test_every_code_folder_has_an_init_file():
    missing = []
    for top in ("tasks", "tests"):
        for folder in [PROJECT_ROOT / top, *(PROJECT_ROOT / top).rglob("*")]:
            code = folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py"))
            if code and not (folder / "__init__.py").is_file() and not _test_folder(folder):
                missing.append(str(folder.relative_to(PROJECT_ROOT)))
    assert missing == []


def _test_folder(folder) -> bool:
    """tests/unit, tests/integration, tests/faults hold test modules that pytest imports by file."""
    return folder.parent == PROJECT_ROOT / "tests" and folder.name != "support"
