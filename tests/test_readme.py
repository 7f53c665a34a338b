"""README's two fresh-machine commands: the test command is exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [ln for ln in re.findall(r"```bash\n(.*?)```", text, re.S)[0:2] for ln in ln.splitlines() if ln and not ln.startswith("#")]


def test_readme_starts_with_demo_and_test_commands() -> None:
    demo, tests = readme_commands()
    assert "csra-posthoc demo" in demo and "pip install" in demo
    assert "pytest" in tests and "pip install" in tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, tests = readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines
