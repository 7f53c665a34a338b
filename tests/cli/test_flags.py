"""Library errors name parameters; the CLI names flags through one table (csra_posthoc.cli.flags)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import csra_posthoc
from csra_posthoc.cli.flags import FLAGS, cli_message
from csra_posthoc.errors import CSRAError
from csra_posthoc.options import DataOptions, ExtractOptions, ModelSource, OutputOptions, ProbeOptions, SweepOptions

PACKAGE = Path(csra_posthoc.__file__).parent


def params_used() -> dict[str, list[str]]:
    """Every constant ``param=`` keyword in the package, with where it is used."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "param" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        found.setdefault(kw.value.value, []).append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_every_param_has_a_flag() -> None:
    used = params_used()
    assert "img_size" in used and "lams" in used  # the scan finds the package's errors
    missing = {name: where for name, where in used.items() if name not in FLAGS}
    assert not missing, f"add these parameters to csra_posthoc/cli/flags.py FLAGS: {missing}"


@pytest.mark.parametrize(
    ("build", "param", "library", "cli"),
    [
        (
            lambda: ExtractOptions(img_size=5),
            "img_size",
            "img_size 5: must be between",
            "--img-size 5: must be between",
        ),
        (
            lambda: ExtractOptions(batch_size=0),
            "batch_size",
            "batch_size 0: must be >= 1",
            "--batch-size 0: must be >= 1",
        ),
        (
            lambda: ExtractOptions(transform="zoom"),
            "transform",
            "transform zoom: choose auto, square or crop",
            "--transform zoom",
        ),  # type: ignore[arg-type]
        (lambda: ExtractOptions(device="tpu"), "device", "device tpu: choose auto, cpu or cuda", "--device tpu"),
        (
            lambda: DataOptions(difficult="maybe"),
            "difficult",
            "difficult maybe: choose ignore, positive or negative",
            "--difficult maybe",
        ),  # type: ignore[arg-type]
        (lambda: DataOptions(max_images=0), "max_images", "max_images 0: must be >= 1", "--max-images 0"),
        (lambda: SweepOptions(lams=()), "lams", "lams: give at least one value", "--lams: give at least one value"),
        (lambda: SweepOptions(lams=(0.1, -1.0)), "lams", "lams -1: every lam", "--lams -1: every lam"),
        (lambda: SweepOptions(temps=(0.0,)), "temps", "temps 0: temperatures must be > 0", "--temps 0"),
        (lambda: SweepOptions(heads=(3,)), "heads", "heads 3: the paper's head counts", "--heads 3"),
        (lambda: SweepOptions(metrics=("F2",)), "metrics", "metrics F2: unknown", "--metrics F2: unknown"),
        (lambda: SweepOptions(fixed_lam=float("nan")), "fixed_lam", "fixed_lam nan: must be", "--fixed-lam nan"),
        (lambda: ProbeOptions(probe_c=0.0), "probe_c", "probe_c 0: must be a finite number > 0", "--probe-c 0"),
        (
            lambda: ModelSource("test_resnet", pretrained=True, random_init=True),
            "model",
            "model needs exactly one weight source: checkpoint=PATH, pretrained=True or random_init=True",
            "--model needs exactly one weight source: --checkpoint PATH, --pretrained or --random-init",
        ),
        (
            lambda: ModelSource("test_resnet", checkpoint="/no/such.pth"),
            "checkpoint",
            "checkpoint /no/such.pth: no such file",
            "--checkpoint /no/such.pth: no such file",
        ),
        (lambda: OutputOptions(out="/"), "out", "out /: is a directory", "--out /: is a directory"),
    ],
)
def test_options_refuse_in_library_terms_and_cli_names_the_flag(build, param: str, library: str, cli: str) -> None:
    with pytest.raises(CSRAError) as info:
        build()
    message = str(info.value)
    assert info.value.param == param
    assert message.startswith(library) and "--" not in message, message
    assert cli_message(message, info.value.param).startswith(cli)


def test_sweep_options_store_tuples_and_accept_lists() -> None:
    opts = SweepOptions(lams=[0.0, 0.2], temps=[], heads=[1], metrics=["CF1"])  # type: ignore[arg-type]
    assert opts.lams == (0.0, 0.2) and opts.temps == () and opts.heads == (1,) and opts.metrics == ("CF1",)


def test_cli_message_leaves_plain_words_and_unknown_names_alone() -> None:
    assert cli_message("cache file x is stale; delete it", None) == "cache file x is stale; delete it"
    assert cli_message("x=1 and lam=0.5", None) == "x=1 and --lam 0.5"
    assert cli_message("lam 2: bad; the lam is", "lam") == "--lam 2: bad; the lam is"
