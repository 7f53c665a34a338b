"""Shared fixtures: small VOC-layout datasets made on the fly (csra_posthoc.data.fixtures), an isolated
cache directory for every test and for the session's shared fixtures. Plain helpers live in tests/helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from csra_posthoc.data.fixtures import random_voc_annotations, write_voc


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Module- and session-scoped fixtures run before any test's own cache is set: they write here,
    never into the user's cache directory."""
    cache = tmp_path_factory.mktemp("session-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSRA_POSTHOC_CACHE", str(cache))
        yield cache


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    write_voc(tmp_path / "data", random_voc_annotations(24))
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CSRA_POSTHOC_CACHE", str(cache))
    return cache
