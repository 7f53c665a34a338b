"""Shared fixtures: small VOC-layout datasets made on the fly (csra_posthoc.data.fixtures), an isolated
cache directory for every test and for the session's shared fixtures. Plain helpers live in tests/helpers.py."""

from __future__ import annotations

import atexit
import gc
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Torch is imported (and its threads set) by the processes that run tests, not by pytest-xdist's
    controller, which only hands out files: on 2 cores its 2 s import would hold back both workers."""
    if _xdist_controller(config):
        return
    if hasattr(config, "workerinput"):
        atexit.register(_skip_interpreter_teardown)
    gc.disable()  # until collection ends: see pytest_collection_finish
    import torch

    torch.set_num_threads(_threads_per_worker(torch.get_num_threads()))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The half million objects that importing torch, timm, scikit-learn and the test modules creates
    live until the process ends; each full garbage collection walked all of them again (about 0.2 s
    each: some 2 s of a worker's collection, then about 1 s more during and after the tests). The
    collector is off while they are imported, and ``gc.freeze`` then leaves them out of every later
    collection; what the tests create is collected as usual."""
    if _xdist_controller(session.config):
        return
    gc.freeze()
    gc.enable()


def _skip_interpreter_teardown() -> None:
    """An xdist worker has sent every result to the controller by the time it exits; the interpreter's
    own teardown of torch's module graph then took about 2 s per worker, which the controller waits
    for. Registered at configure, this handler runs after every handler registered later (pytest's,
    the tests'), then ends the process without that teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _xdist_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def _threads_per_worker(default: int) -> int:
    """Under pytest-xdist each worker gets its share of the cores (two workers with two threads each
    on two cores spend their time switching); one process keeps torch's own default."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else default


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Module- and session-scoped fixtures run before any test's own cache is set: they write here,
    never into the user's cache directory."""
    cache = tmp_path_factory.mktemp("session-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSRA_POSTHOC_CACHE", str(cache))
        yield cache


def _write_voc_fixture(root: Path) -> Path:
    from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

    write_voc(root / "data", random_voc_annotations(24))
    return root / "data"


@pytest.fixture(scope="session")
def _shared_voc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_voc_fixture(tmp_path_factory.mktemp("voc"))


def _listing(root: Path) -> list[tuple[str, int, str]]:
    """Every path below ``root`` with its mtime and, for a file, a hash of its bytes (an edit that
    keeps the size and restores the mtime still shows)."""
    return sorted(
        (
            str(p.relative_to(root)),
            p.stat().st_mtime_ns,
            hashlib.blake2b(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in root.rglob("*")
    )


@pytest.fixture
def voc_dir(_shared_voc_dir: Path) -> Iterator[Path]:
    """A 24-image VOC-layout folder, written once per process and shared by the tests that only read
    it (writing 100 files took about 35 ms a test); a test that changes it fails here, and takes
    ``fresh_voc_dir`` instead."""
    before = _listing(_shared_voc_dir)
    yield _shared_voc_dir
    assert _listing(_shared_voc_dir) == before, "the test changed the shared voc_dir: use fresh_voc_dir"


@pytest.fixture
def fresh_voc_dir(tmp_path: Path) -> Path:
    """The same VOC-layout folder as ``voc_dir``, written for this test alone (which may change it)."""
    return _write_voc_fixture(tmp_path)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CSRA_POSTHOC_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session", autouse=True)
def click_command_built_once() -> Iterator[None]:
    """typer's ``CliRunner.invoke`` rebuilds the click command from the app on every call (about 20 ms
    for this app, some 300 calls a run); no test changes an app after its first call, so each app's
    command is built once per process."""
    import typer.testing

    built: dict[int, tuple[object, object]] = {}
    build = typer.testing._get_command

    def once(app):  # type: ignore[no-untyped-def]
        if id(app) not in built:
            built[id(app)] = (app, build(app))  # the app is kept so that its id is not reused
        return built[id(app)][1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(typer.testing, "_get_command", once)
        yield
