"""Shared fixtures: small VOC-layout datasets made on the fly (csra_posthoc.data.fixtures), an isolated cache directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from csra_posthoc.data.fixtures import random_voc_annotations, write_voc


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    write_voc(tmp_path / "data", random_voc_annotations(24))
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CSRA_POSTHOC_CACHE", str(cache))
    return cache
