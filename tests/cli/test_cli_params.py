"""One set of Typer option aliases (csra_posthoc.cli.params) and the parameter -> flag table read off
the app (csra_posthoc.cli.app.cli_flags), not maintained by hand (issue 21, part 3)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import get_args

import pytest
import typer
from typer.testing import CliRunner

from csra_posthoc.cli.app import app, cli_flags
from csra_posthoc.cli.flags import FLAGS, cli_message
from csra_posthoc.cli.messages import LIBRARY_FLAGS, command_params

COMMANDS = ("sweep", "demo", "apply", "predict", "compare", "attention")
runner = CliRunner()


def help_flags(command: str) -> set[str]:
    """The long flags ``csra-posthoc COMMAND --help`` shows (read from the help text, not the table)."""
    res = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", res.output)) - {"--help"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_in_help_is_in_the_derived_table(command: str) -> None:
    shown = help_flags(command) - {
        f"--no-{flag[2:]}" for flag in FLAGS.values()
    }  # a boolean's off switch (--no-test-pool) names the same parameter
    assert shown <= set(FLAGS.values()), shown - set(FLAGS.values())


def test_the_table_is_the_apps_own() -> None:
    params = command_params(typer.main.get_command(app))
    flags_by_name: dict[str, set[str]] = defaultdict(set)
    for name, flag in params:
        flags_by_name[name].add(flag)
    clashes = {name: flags for name, flags in flags_by_name.items() if len(flags) > 1}
    assert not clashes, f"one Python name, several flags: {clashes}"
    assert FLAGS == cli_flags() == {**{n: next(iter(f)) for n, f in flags_by_name.items()}, **LIBRARY_FLAGS}
    # the hand table only holds library names that are no CLI parameter
    assert not set(LIBRARY_FLAGS) & set(flags_by_name)
    # library and CLI share parameter names: the ones the option objects use
    assert (
        FLAGS["patched_file"] == "--patched"
        and FLAGS["save_scores_to"] == "--save-scores"
        and FLAGS["paths"] == "RESULTS_JSON"
    )
    assert FLAGS["images"] == "IMAGE" and FLAGS["use_cache"] == "--no-cache"


def test_shared_options_have_one_help_text() -> None:
    """An option several commands take is declared once (cli/params.py): same flag, same help everywhere."""
    group = typer.main.get_command(app)
    helps: dict[str, set[str]] = defaultdict(set)
    for name in COMMANDS:
        for param in group.commands[name].params:  # type: ignore[attr-defined]
            if param.param_type_name == "option":
                flag = next(o for o in param.opts if o.startswith("--"))
                if (name, flag) != ("demo", "--img-size"):  # the demo's is the mosaic canvas: another option
                    helps[flag].add(param.help)
    for flag in ("--model", "--checkpoint", "--pretrained", "--random-init", "--head-file", "--lam", "--temperature", "--from-results",
                 "--pick", "--img-size", "--transform", "--classes", "--classes-file", "--device", "--batch-size", "--cache-dir", "--save-scores"):  # fmt: skip
        assert len(helps[flag]) == 1, (flag, helps[flag])


def test_one_definition_of_the_transform_choices() -> None:
    from csra_posthoc import defaults, options
    from csra_posthoc.data import transforms

    assert options.Transform is defaults.TransformChoice and transforms.TransformChoice is defaults.TransformChoice
    assert defaults.TRANSFORM_CHOICES == get_args(defaults.TransformChoice) == ("auto", "square", "crop")
    res = runner.invoke(
        app, ["predict", "--model", "test_resnet", "--random-init", "--transform", "zoom", "x.png"], terminal_width=300
    )
    assert res.exit_code == 2 and "--transform zoom: choose auto, square or crop" in res.output, res.output


def test_a_library_error_names_the_cli_flag_through_the_derived_table() -> None:
    assert cli_message("patched_file p.ts holds the weights and the head: drop `checkpoint`", "patched_file") == (
        "--patched p.ts holds the weights and the head: drop --checkpoint"
    )
    assert cli_message("save_scores_to x: is a directory", "save_scores_to") == "--save-scores x: is a directory"
