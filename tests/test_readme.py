"""README's two fresh-machine commands: the test command is exactly what CI runs; the demo command
gets the real data where apt exists and goes on where it does not; no link leaves the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [
        ln
        for ln in re.findall(r"```bash\n(.*?)```", text, re.S)[0:2]
        for ln in ln.splitlines()
        if ln and not ln.startswith("#")
    ]


STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
if [ "$(basename "$0")" = python3 ] && [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && : > "$3/bin/activate"; fi
if [ "$(basename "$0")" = sudo ]; then exec "$@"; fi
exit 0
"""


def run_with_stubs(command: str, tmp_path: Path) -> list[str]:
    """Run a README command in an empty folder with python3, pip, apt-get, sudo, python and
    csra-posthoc replaced by stubs that log their arguments; returns the calls in order."""
    stubs, work, log = tmp_path / "bin", tmp_path / "work", tmp_path / "calls.log"
    stubs.mkdir()
    work.mkdir()
    log.touch()
    for tool in ("python3", "python", "pip", "apt-get", "sudo", "csra-posthoc"):
        (stubs / tool).write_text(STUB)
        (stubs / tool).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(log)}
    done = subprocess.run(["/bin/bash", "-c", command], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [
        line for line in log.read_text().splitlines() if not line.startswith("sudo ")
    ]  # sudo runs the stub it names


def test_demo_command_makes_a_venv_installs_the_data_and_the_demo_then_runs_it(tmp_path: Path) -> None:
    demo, _ = readme_commands()
    calls = run_with_stubs(demo, tmp_path)
    assert calls[0] == "python3 -m venv .venv"
    assert calls[1:3] == ["apt-get update -qq", "apt-get install -y -qq dataset-fashion-mnist"]
    assert calls[3].startswith("pip install torch==") and calls[4] == "pip install -e .[demo]"
    assert calls[5:] == ["csra-posthoc demo --out demo.json"]


def test_test_command_makes_a_venv_installs_the_test_extra_then_runs_pytest(tmp_path: Path) -> None:
    _, tests = readme_commands()
    calls = run_with_stubs(tests, tmp_path)
    assert calls[0] == "python3 -m venv .venv"
    assert calls[1].startswith("pip install torch==") and calls[2] == "pip install -e .[test]"
    assert calls[3:] == ["python -m pytest"]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, tests = readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def data_step() -> str:
    """The part of command 1 that installs Fashion-MNIST (a subshell that always succeeds)."""
    demo, _ = readme_commands()
    step = demo.split(". .venv/bin/activate && ", 1)[1].split(" && pip install", 1)[0]
    assert step.startswith("(") and step.endswith(")") and "dataset-fashion-mnist" in step
    return step


@pytest.mark.parametrize("path", ["", "/nonexistent"])
def test_demo_command_goes_on_where_apt_is_missing(path: str) -> None:
    run = subprocess.run(
        ["/bin/bash", "-c", f"{data_step()} && echo next-step"], env={"PATH": path}, capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.strip() == "next-step", run.stderr


def test_demo_command_goes_on_when_apt_fails(tmp_path: Path) -> None:
    """apt-get present but failing (no root, no sudo, no such package): the demo still runs."""
    for tool in ("apt-get", "sudo"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 100\n")
        (tmp_path / tool).chmod(0o755)
    run = subprocess.run(
        ["/bin/bash", "-c", f"{data_step()} && echo next-step"],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and run.stdout.strip() == "next-step", run.stderr


def test_no_tracked_file_points_outside_the_repository() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if path.is_file() and path.suffix in {".py", ".md", ".toml", ".txt", ".cfg", ".yml", ".yaml", ""}:
            text = path.read_text(errors="ignore")
            if ".." + "/shared" in text or "METHOD" + ".md" in text:
                offenders.append(name)
    assert offenders == []
    assert (ROOT / "docs" / "method.md").is_file()


def test_method_page_linked_from_readme_exists() -> None:
    links = re.findall(r"\]\(([^)#]+)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert "docs/method.md" in local
    assert all((ROOT / link).exists() for link in local), local
