"""--help reads for a newcomer: every option and argument has a help text, no metavar shows a Python
type, and the top-level command list shows each command's short help whole (issue 24, part 4)."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from csra_posthoc.cli.app import app

ROOT_COMMAND = typer.main.get_command(app)
COMMANDS = sorted(ROOT_COMMAND.commands)  # type: ignore[attr-defined]
PYTHON_TYPE = re.compile(r"\b(list|tuple|dict|set|Optional|Union)\[|\bPath\b|NoneType")


def help_text(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "120", "TERMINAL_WIDTH": "120"})
    assert res.exit_code == 0, res.output
    return res.output


def test_there_are_commands() -> None:
    assert {"sweep", "demo", "apply", "predict", "compare", "attention"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_parameter_has_help(name: str) -> None:
    command = ROOT_COMMAND.commands[name]
    missing = [p.name for p in command.params if not (getattr(p, "help", None) or "").strip() and p.name != "help"]
    assert missing == [], f"{name}: no help text for {missing}"


@pytest.mark.parametrize("name", COMMANDS)
def test_no_metavar_shows_a_python_type(name: str) -> None:
    text = help_text(name)
    bracketed = re.findall(r"<[^<>\s]*>|\{[^{}\s]*\}", text)
    offenders = [m for m in bracketed if PYTHON_TYPE.search(m)]
    assert offenders == [], f"{name} --help shows Python types: {offenders}"


def test_top_level_command_list_is_not_cut() -> None:
    text = help_text()
    listing = text.split("Commands:", 1)[1]
    rows = {}
    for line in listing.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in COMMANDS:
            rows[parts[0]] = parts[1].strip()
    assert set(rows) == set(COMMANDS), listing
    for name, short in rows.items():
        assert not short.endswith("..."), f"{name}: {short!r} is cut"
        assert short.endswith("."), f"{name}: {short!r} is not a complete sentence"
