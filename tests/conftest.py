"""Shared fixtures: small VOC-layout datasets made on the fly (csra_posthoc.data.fixtures), an isolated
cache directory for every test and for the session's shared fixtures. Plain helpers live in tests/helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from csra_posthoc.data.fixtures import random_voc_annotations, write_voc


def _threads_per_worker() -> int:
    """Under pytest-xdist each worker gets its share of the cores (two workers with two threads each
    on two cores spend their time switching); one process keeps torch's own default."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else torch.get_num_threads()


torch.set_num_threads(_threads_per_worker())


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
