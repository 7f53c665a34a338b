"""Shared fixtures: small VOC-layout datasets made on the fly, an isolated cache directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from csra_posthoc.data.voc import VOC_CLASSES


def write_voc(
    root: Path, annotations: dict[str, list[tuple[str, int]]], split: str = "test", size=(48, 64), seed=0, year: str = "2007"
) -> Path:
    """A VOC folder: ``annotations`` maps image id -> [(class, difficult), ...]."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for image_id, objects in annotations.items():
        pixels = (rng.random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(
            f"<object><name>{name}</name><difficult>{difficult}</difficult></object>" for name, difficult in objects
        )
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objs}</annotation>")
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n")
    return voc


def random_voc_annotations(n: int, seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        picks = rng.choice(len(VOC_CLASSES), size=int(rng.integers(1, 4)), replace=False)
        out[f"{i:06d}"] = [(VOC_CLASSES[c], int(rng.random() < 0.2)) for c in picks]
    # every class gets one plain positive so mAP covers all 20
    for c, name in enumerate(VOC_CLASSES):
        out[f"{c:06d}"].append((name, 0)) if c < n else None
    return out


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    write_voc(tmp_path / "data", random_voc_annotations(24))
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CSRA_POSTHOC_CACHE", str(cache))
    return cache
