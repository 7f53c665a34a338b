"""CSV labels: what would silently skew the numbers is refused with its line; Excel's BOM is fine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from csra_posthoc import CSRAError, load_dataset


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("p.png", "q.png", "r.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    return tmp_path


def load(folder: Path, text: str, encoding: str = "utf-8"):
    (folder / "labels.csv").write_bytes(text.encode(encoding))
    return load_dataset("csv", folder, labels=folder / "labels.csv")


@pytest.mark.parametrize("second", ["p.png", "./p.png"])
def test_duplicate_image_row_is_refused_with_both_lines(images: Path, second: str) -> None:
    with pytest.raises(CSRAError, match=rf"labels.csv:4: image {second} already listed on line 2"):
        load(images, f"path,shoe,bag\np.png,1,0\nq.png,0,1\n{second},0,1\n")


@pytest.mark.parametrize(
    "header, expected",
    [
        ("path,shoe,bag,shoe", r"labels.csv:1: class 'shoe' is in columns 2 and 4"),
        ("path,shoe,,bag", r"labels.csv:1: column 3 has no class name"),
        ("path,shoe, ", r"labels.csv:1: column 3 has no class name"),
    ],
)
def test_duplicate_or_empty_class_names_are_refused(images: Path, header: str, expected: str) -> None:
    width = header.count(",")
    with pytest.raises(CSRAError, match=expected):
        load(images, f"{header}\np.png{',1' * width}\n")


def test_utf8_bom_is_accepted(images: Path) -> None:
    text = "path,chaussure,sac\np.png,1,0\nq.png,0,1\n"
    with_bom = load(images, text, "utf-8-sig")
    plain = load(images, text)
    assert with_bom.classes == plain.classes == ["chaussure", "sac"]
    assert with_bom.ids == plain.ids and (with_bom.labels == plain.labels).all()


def test_non_utf8_file_is_one_line(images: Path) -> None:
    with pytest.raises(CSRAError, match="not UTF-8 text; save it as CSV UTF-8"):
        load(images, "path,café\np.png,1\n", "latin-1")
