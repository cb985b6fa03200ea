"""The README's two set-up commands are what CI runs, word for word."""

from __future__ import annotations

import re

from tasks.libs.core.settings import PROJECT_ROOT


def readme_setup_commands() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("## Set-up: two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README's set-up section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_has_two_commands_one_for_the_job_one_for_the_tests():
    commands = readme_setup_commands()
    assert len(commands) == 2
    assert commands[0].endswith("inv server.start") and commands[1].endswith("inv test.all")
    assert all(c.startswith("python3 -m venv .venv && ") for c in commands)  # never pip into the system


def test_ci_runs_exactly_the_readme_commands():
    ci_lines = (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()
    for command in readme_setup_commands():
        assert command in ci_lines
