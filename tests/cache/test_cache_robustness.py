"""The cache never costs a run its results: unusable folders, failing writes, file modes, orphans, locks."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import csra_posthoc.cache.store as cache_mod
import csra_posthoc.extraction.run as extract_mod
from csra_posthoc import extract, load_dataset, load_model
from csra_posthoc.atomic import atomic_write
from csra_posthoc.cache.store import key_lock, open_cache_dir
from csra_posthoc.cli.app import app
from csra_posthoc.extraction.statistics import CacheInfo
from tests.helpers import sweep_argv

runner = CliRunner()
BASE = sweep_argv(lams="0,0.1", temps="", heads="")


@pytest.fixture
def adapter():
    """Random-init test_resnet whose load-time checks run at the 64 px these tests extract at."""
    return load_model("test_resnet", random_init=True, num_classes=20, img_size=64)


@pytest.mark.parametrize("where", ["a_file", "below_a_file"])
def test_unusable_cache_dir_warns_and_keeps_results(voc_dir: Path, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a regular file")
    cache_dir = blocker if where == "a_file" else blocker / "sub"
    out = tmp_path / "r.json"
    res = runner.invoke(app, [*BASE, "--data-dir", str(voc_dir), "--cache-dir", str(cache_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    warnings = [ln for ln in res.output.splitlines() if f"cache dir {cache_dir} is not writable" in ln]
    assert len(warnings) == 1 and "going on without caching" in warnings[0]
    assert "best λ" in res.output
    assert json.loads(out.read_text())["num_images"] == 24


def test_failing_cache_write_is_a_warning(voc_dir: Path, adapter, monkeypatch, isolated_cache) -> None:
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(extract_mod, "save_statistics", refuse)
    stats = extract(adapter, load_dataset("voc2007", voc_dir), img_size=64)
    assert stats.num_images == 24 and stats.info.cache.path is None
    assert list(isolated_cache.glob("*.safetensors")) == []


def test_unwritable_cache_with_probe_warns_once(tmp_path: Path) -> None:
    from csra_posthoc.data.fixtures import random_voc_annotations, write_voc

    annotations = random_voc_annotations(40, seed=1)
    ids = list(annotations)
    write_voc(tmp_path / "data", {i: annotations[i] for i in ids[:20]}, split="test")
    write_voc(tmp_path / "data", {i: annotations[i] for i in ids[20:]}, split="trainval", seed=1)
    (tmp_path / "f").write_text("x")
    res = runner.invoke(
        app, [*BASE, "--data-dir", str(tmp_path / "data"), "--head", "probe", "--cache-dir", str(tmp_path / "f")]
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("is not writable") == 1 and "best λ" in res.output


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_respects_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.json", lambda tmp: Path(tmp).write_text("{}"))
        plain = tmp_path / "plain.json"
        plain.write_text("{}")  # what open() gives under this umask: the reference
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)


def test_orphaned_tmp_files_are_removed_when_old(tmp_path: Path) -> None:
    old, fresh, other = (
        tmp_path / ".x.safetensors.abc123.tmp",
        tmp_path / ".y.safetensors.def456.tmp",
        tmp_path / "keep.tmp",
    )
    for f in (old, fresh, other):
        f.write_bytes(b"half")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    os.utime(other, (two_days_ago, two_days_ago))  # not atomic_write's name: not ours
    assert open_cache_dir(tmp_path) is None
    assert not old.exists() and fresh.exists() and other.exists()


def test_relative_and_absolute_data_dir_share_the_cache(voc_dir: Path, adapter, monkeypatch) -> None:
    monkeypatch.chdir(voc_dir.parent)
    first = extract(adapter, load_dataset("voc2007", voc_dir.name), img_size=64)
    second = extract(adapter, load_dataset("voc2007", voc_dir.resolve()), img_size=64)
    assert first.info.cache.reused is False and second.info.cache.reused is True
    assert first.info.cache.path == second.info.cache.path


def test_verify_images_notices_same_size_same_mtime_change(fresh_voc_dir: Path, adapter) -> None:
    images = load_dataset("voc2007", fresh_voc_dir)
    by_stamp, by_content = images.fingerprint(), images.fingerprint(content=True)
    first = extract(adapter, images, img_size=64, verify_images=True)
    assert first.info.cache == replace(first.info.cache, reused=False, images_key="content hash")
    victim = images.paths[0]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # same size
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert images.fingerprint() == by_stamp  # the documented blind spot of size+mtime
    assert images.fingerprint(content=True) != by_content
    again = extract(adapter, images, img_size=64, verify_images=True)
    assert again.info.cache.reused is False
    plain = extract(adapter, images, img_size=64)
    assert plain.info.cache.images_key == "size+mtime"


def test_second_run_waits_for_the_lock_and_reuses(voc_dir: Path, adapter, monkeypatch, isolated_cache) -> None:
    images = load_dataset("voc2007", voc_dir)
    reference = extract(adapter, images, img_size=64)  # the file "another run" will write
    path = Path(reference.info.cache.path)
    saved = path.read_bytes()
    path.unlink()
    calls = []
    real = extract_mod.compute_statistics
    monkeypatch.setattr(extract_mod, "compute_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    from rich.console import Console

    console = Console(record=True, width=300)
    result = {}
    with key_lock(path, lambda lock: None):  # the other run holds the lock
        worker = threading.Thread(
            target=lambda: result.update(stats=extract(adapter, images, img_size=64, console=console))
        )
        worker.start()
        deadline = time.time() + 30
        while "waiting for another run" not in console.export_text(clear=False) and time.time() < deadline:
            time.sleep(0.05)
        assert worker.is_alive()
        path.write_bytes(saved)  # the other run finishes its file, then releases the lock
    worker.join(60)
    text = console.export_text()
    assert f"waiting for another run extracting the same statistics (lock {path.with_suffix('.lock')})" in text
    assert calls == [] and result["stats"].info.cache.reused is True


@pytest.mark.slow  # end to end (sweep, export or subprocess): the full suite runs it
def test_report_says_which_image_key_was_used(voc_dir: Path, tmp_path: Path) -> None:
    for flag, key in (([], "size+mtime"), (["--verify-images"], "content hash")):
        out = tmp_path / "r.json"
        res = runner.invoke(app, [*BASE, "--data-dir", str(voc_dir), "--out", str(out), *flag])
        assert res.exit_code == 0, res.output
        assert json.loads(out.read_text())["cache_key_images"] == key
        assert f"cache key: image files by {key}" in res.output
    res = runner.invoke(app, [*BASE, "--data-dir", str(voc_dir), "--out", str(out), "--no-cache"])
    assert json.loads(out.read_text())["cache_key_images"] is None and "cache key:" not in res.output


def test_read_only_cache_is_still_read(voc_dir: Path, adapter, monkeypatch, isolated_cache) -> None:
    images = load_dataset("voc2007", voc_dir)
    extract(adapter, images, img_size=64)
    monkeypatch.setattr(cache_mod, "open_cache_dir", lambda d: "read-only file system")  # as root, chmod cannot do it
    assert extract(adapter, images, img_size=64).info.cache.reused is True
    missed = extract(adapter, images, img_size=72)  # a miss in a read-only cache: computed, not cached
    assert missed.info.cache == CacheInfo(path=None, reused=False, images_key=None)
