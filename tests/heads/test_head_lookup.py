"""head_lookup.find_results_head: the probe a results JSON names, found by its fingerprint (issue 24)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from csra_posthoc.errors import CSRAError
from csra_posthoc.heads.head_file import save_head
from csra_posthoc.heads.location import LocationHead
from csra_posthoc.heads.lookup import find_results_head
from csra_posthoc.report.results_file import ResultsFile


def tiny_head(seed: int, classes: int = 3, dim: int = 5) -> LocationHead:
    g = torch.Generator().manual_seed(seed)
    return LocationHead(
        torch.randn(classes, dim, generator=g), torch.randn(classes, generator=g), torch.ones(dim), torch.zeros(dim)
    )


def fingerprint(head: LocationHead) -> str:
    """Computed here, not by the code under test: blake2b-16 over the sorted keys, dtype, shape and bytes
    (the sweep's ``head_fingerprint`` definition)."""
    h = hashlib.blake2b(digest_size=16)
    state = head.state_dict()
    for key in sorted(state):
        t = state[key].detach().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write(head: LocationHead, path: Path) -> Path:
    save_head(head, path, {"probe": {}, "model": "tiny"})
    return path


def results_for(head: LocationHead, **extra) -> ResultsFile:
    return ResultsFile.from_json(
        {
            "model": "tiny",
            "head": "linear probe on toy trainval, 10 images (C=0.01)",
            "head_fingerprint": fingerprint(head),
            **extra,
        }
    )


def test_found_beside_the_results_file_not_the_other_head(tmp_path):
    wanted, other = tiny_head(0), tiny_head(1)
    write(other, tmp_path / "a-other.safetensors")  # first in name order: a wrong fingerprint is skipped
    target = write(wanted, tmp_path / "b-head.safetensors")
    (tmp_path / "c-not-safetensors.safetensors").write_bytes(b"not a safetensors file")
    assert find_results_head(results_for(wanted), tmp_path / "r.json") == target.resolve()


def test_recorded_head_file_first(tmp_path):
    wanted = tiny_head(2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = write(wanted, elsewhere / "mine.safetensors")
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    assert find_results_head(results_for(wanted, head_file=str(target)), results_dir / "r.json") == target.resolve()


def test_found_in_the_probe_cache(tmp_path):
    wanted = tiny_head(3)
    cache, results_dir = tmp_path / "cache", tmp_path / "results"
    cache.mkdir()
    results_dir.mkdir()
    write(tiny_head(4), cache / "probe-aaaa.safetensors")
    target = write(wanted, cache / "probe-bbbb.safetensors")
    assert find_results_head(results_for(wanted), results_dir / "r.json", cache) == target.resolve()
    # not looked for in the cache when none is given
    with pytest.raises(CSRAError):
        find_results_head(results_for(wanted), results_dir / "r.json")


def test_stale_recorded_path_falls_back(tmp_path):
    wanted = tiny_head(5)
    write(tiny_head(6), tmp_path / "moved.safetensors")  # the recorded file now holds another head
    target = write(wanted, tmp_path / "z.safetensors")
    results = results_for(wanted, head_file=str(tmp_path / "moved.safetensors"))
    assert find_results_head(results, tmp_path / "r.json") == target.resolve()


def test_model_head_needs_no_file(tmp_path):
    head = tiny_head(7)
    write(head, tmp_path / "h.safetensors")
    results = ResultsFile.from_json({"model": "tiny", "head": "model", "head_fingerprint": fingerprint(head)})
    assert find_results_head(results, tmp_path / "r.json", tmp_path) is None


def test_not_found_is_one_line_saying_where_and_what_to_pass(tmp_path):
    write(tiny_head(8), tmp_path / "other.safetensors")
    with pytest.raises(CSRAError) as info:
        find_results_head(results_for(tiny_head(9)), tmp_path / "r.json", tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    assert "head_file" in message and "save_head" in message and str(tmp_path) in message
    assert info.value.param == "from_results"
