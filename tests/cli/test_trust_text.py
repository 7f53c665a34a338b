"""User data never drives the terminal: class names, model names and file names with rich markup or
ANSI / OSC bytes print as written (markup visible, control bytes as ``\\x1b`` escapes).

Real commands through the CLI with colour forced on (``FORCE_COLOR``: rich writes what a terminal
would get). Rich's own styling is CSI (``ESC [ ... m``); after stripping that, no ESC or BEL byte
may be left, and no OSC sequence (``ESC ]``: a hyperlink or a new window title) anywhere.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from rich.text import Text
from typer.testing import CliRunner

from csra_posthoc.cli.app import app
from csra_posthoc.data.fixtures import write_image
from csra_posthoc.text import plain, safe
from tests.helpers import apply_argv, sweep_argv

LINK = "[link=http://x]cat[/link]"
TITLE = "\x1b]0;pwned\x07dog"
STYLE = "[bold red]cat[-]"
NAMES = [LINK, TITLE, STYLE]
SHOWN = [LINK, "\\x1b]0;pwned\\x07dog", STYLE]  # as the user must see them
CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
ENV = {"FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "400"}

runner = CliRunner()


def _invoke(args: list[str]):
    return runner.invoke(app, args, env=ENV)


def _visible(output: str) -> str:
    """What a terminal shows: rich's CSI styling removed; must hold no other control byte."""
    assert "\x1b]" not in output, f"an OSC sequence reached the terminal: {output!r}"
    assert "\x07" not in output, f"a BEL byte reached the terminal: {output!r}"
    text = CSI.sub("", output)
    assert "\x1b" not in text, f"a raw ESC reached the terminal: {text!r}"
    return text


def test_plain_and_safe_by_hand() -> None:
    assert plain(TITLE) == "\\x1b]0;pwned\\x07dog"
    assert plain("a\tb\nc") == "a\tb\nc"
    for name, shown in zip(NAMES, SHOWN, strict=True):
        assert Text.from_markup(f"[bold]{safe(name)}[/]").plain == shown


@pytest.fixture(scope="module")
def sweep_json(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A CSV dataset whose header holds hostile class names: the first positive everywhere (listed
    as all-positive), the second nowhere (listed as left out of mAP), the third mixed."""
    root = tmp_path_factory.mktemp("trust")
    data = root / "data"
    rows = []
    for i in range(6):
        write_image(data / f"im{i}.jpg", (40, 32), seed=i)
        rows.append([f"im{i}.jpg", 1, 0, i % 2])
    labels = root / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", *NAMES])
        writer.writerows(rows)
    out = root / "r.json"
    args = sweep_argv(img_size=None, dataset="csv", data_dir=data, labels=labels)
    res = _invoke(
        [
            *args,
            "--img-size",
            "64",
            "--lams",
            "0,0.5",
            "--temps",
            "inf",
            "--heads",
            "1",
            "--no-bootstrap",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    return out, res.output


def test_sweep_prints_class_names_as_written(sweep_json: tuple[Path, str]) -> None:
    _, output = sweep_json
    text = _visible(output)
    assert SHOWN[0] in text  # all-positive line
    assert SHOWN[1] in text  # left out of mAP (no positive)


def test_compare_prints_model_and_dataset_names_as_written(sweep_json: tuple[Path, str], tmp_path: Path) -> None:
    data = json.loads(sweep_json[0].read_text())
    data["model"] = f"{LINK}{TITLE}"
    data["dataset"] = STYLE
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(data))
    res = _invoke(["compare", str(hostile)])
    assert res.exit_code == 0, res.output
    text = _visible(res.output)
    assert f"{LINK}{SHOWN[1]}" in text
    assert STYLE in text


def test_patched_config_names_and_file_names_as_written(sweep_json: tuple[Path, str], tmp_path: Path) -> None:
    """apply from the hostile results (the config carries the class names), then predict on an
    image whose file name is markup: the table shows both as written."""
    patched = tmp_path / "p.safetensors"
    res = _invoke(apply_argv("test_resnet", sweep_json[0], patched, "--random-init", pick="best"))
    assert res.exit_code == 0, res.output
    _visible(res.output)
    image = write_image(tmp_path / f"{STYLE}.jpg", (40, 32), seed=9)
    res = _invoke(["predict", "--patched", str(patched), str(image), "--threshold", "0", "--top-k", "3"])
    assert res.exit_code == 0, res.output
    text = _visible(res.output)
    assert f"{STYLE}.jpg" in text
    for shown in SHOWN:
        assert shown in text


def test_an_error_naming_a_hostile_file_prints_it_as_written(tmp_path: Path) -> None:
    missing = tmp_path / f"[link=x]{STYLE}{TITLE}.jpg"  # no "/" in a file name
    res = _invoke(["predict", "--model", "test_resnet", "--random-init", str(missing)])
    assert res.exit_code == 2
    text = _visible(res.output)
    assert f"[link=x]{STYLE}{SHOWN[1]}.jpg" in text.replace("\n", "")


@pytest.mark.slow
def test_real_weights_on_a_real_photo_with_a_markup_file_name(tmp_path: Path) -> None:
    """efficientnet_lite0's packaged ImageNet weights on skimage's astronaut saved as ``[bold red]cat[-].jpg``:
    the name prints as written, the real top class beside it."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    image = tmp_path / f"{STYLE}.jpg"
    Image.fromarray(skdata.astronaut()).save(image)
    res = _invoke(
        [
            "predict",
            "--model",
            "efficientnet_lite0",
            "--pretrained",
            str(image),
            "--top-k",
            "3",
            "--threshold",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert res.exit_code == 0, res.output
    text = _visible(res.output)
    assert f"{STYLE}.jpg" in text
