"""The real sweep under 2 gloo ranks on CPU equals the single-process run (issue 13).

Each run forks the CLI's ranks with torchrun's environment (tests/dist_scenarios.launch_cli;
the slow test goes through torchrun itself) on a small VOC fixture with a seeded random
test_resnet at 64 px, and compares rank 0's results JSON, cache file and statistics with a plain
single-process run's, in separate cache folders (so both really extract).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csra_posthoc.cache.store import load_statistics
from csra_posthoc.data.fixtures import random_voc_annotations, write_voc
from tests import dist_scenarios
from tests.helpers import sweep_argv, torchrun_errors

REPO = Path(__file__).resolve().parents[2]
BASE = sweep_argv(device="cpu", quiet=True)


def _voc(root: Path, n: int = 23) -> Path:
    write_voc(root, random_voc_annotations(n))  # 23: the 2 shards differ in size (12 and 11)
    return root


def _assert_close(a, b, path: str = "") -> None:
    """JSON equality, floats to 1e-6 (per-image math is the same; only the batch a row rode in may differ)."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not (math.isnan(a) and math.isnan(b)):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6), path
    else:
        assert a == b, path


def _run(tmp_path: Path, name: str, world: int, args: list[str]) -> tuple[list[int | None], dict, list[Path], dict]:
    out = tmp_path / name
    argv = [*BASE, *args, "--cache-dir", str(out / "cache"), "--out", str(out / "results.json")]
    codes, _, printed = dist_scenarios.launch_cli(argv, out / "logs", world=world)
    data = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    return codes, data, sorted((out / "cache").glob("*.safetensors")), printed


@pytest.mark.parametrize(
    "batch_size", ["4", pytest.param("16", marks=pytest.mark.slow)]
)  # 4: shards of 12 and 11 images; 16: 2 batches, shards of 16 and 7
@pytest.mark.slow
def test_two_rank_sweep_equals_single_process(tmp_path: Path, batch_size: str) -> None:
    data = _voc(tmp_path / "data")
    args = ["--data-dir", str(data), "--batch-size", batch_size, "--metrics", "CF1,OF1"]
    codes1, single, files1, printed1 = _run(tmp_path, "single", 1, args)
    codes2, multi, files2, printed2 = _run(tmp_path, "two", 2, args)
    assert codes1 == [0], printed1
    assert codes2 == [0, 0], printed2
    _assert_close(multi, single)
    assert multi == single  # exact: each rank's batches are the single run's (shards of whole batches)
    assert [f.name for f in files2] == [f.name for f in files1] and len(files1) == 1  # same cache key
    a, b = load_statistics(files1[0]), load_statistics(files2[0])
    assert a.ids == b.ids and a.info.key == b.info.key and a.info.to_json() == b.info.to_json()
    for name in (
        "avg",
        "max",
        "attn",
        "logits",
        "labels",
        "argmax",
    ):  # argmax: the pointing game's locations, gathered alike
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert printed2[1] == ("", "")  # rank 1 prints nothing
    assert "baseline" in printed2[0][0] and "wrote" in printed2[0][0]  # rank 0 prints the table
    # a second 2-rank run reuses rank 0's cache: no extraction, same JSON
    codes3, again, _, _ = _run(tmp_path, "two", 2, args)
    assert codes3 == [0, 0] and again == multi


@pytest.mark.slow
def test_a_bad_image_on_one_rank_stops_both_with_one_line(tmp_path: Path) -> None:
    data = _voc(tmp_path / "data")
    bad = data / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000020.jpg"  # in rank 1's shard (images 12..22)
    bad.write_bytes(b"not a jpeg")
    codes, wall, printed = dist_scenarios.launch_cli(
        [*BASE, "--data-dir", str(data), "--batch-size", "4", "--no-cache"], tmp_path / "logs", timeout_s=30.0
    )
    assert codes == [2, 2]
    assert wall < 30.0  # the per-batch status check, not the collectives' timeout, ended it
    err0 = printed[0][1].strip()
    assert err0.count("\n") == 0 and err0.startswith("error: rank 1 failed at 'extract': ")
    assert "000020.jpg" in err0 and "cannot decode image" in err0
    assert printed[1] == ("", "")  # rank 0 says it for both


@pytest.mark.slow
def test_ranks_given_different_arguments_are_refused(tmp_path: Path) -> None:
    data = _voc(tmp_path / "data")
    codes, _, printed = dist_scenarios.launch_cli(
        lambda r: sweep_argv(img_size=64 + 32 * r, device="cpu", quiet=True, data_dir=data, cache=False),
        tmp_path / "logs",
    )
    assert codes == [2, 2]
    assert printed[0][1].strip() == (
        "error: ranks were launched with different arguments: rank 1 differs from rank 0 (options.img_size: 64 vs 96); "
        "launch every rank with the same command line"
    )
    assert printed[1] == ("", "")  # the same refusal on every rank: rank 0 says it once


@pytest.mark.slow
def test_more_ranks_than_images_is_refused(tmp_path: Path) -> None:
    data = _voc(tmp_path / "data", 1)
    codes, _, printed = dist_scenarios.launch_cli([*BASE, "--data-dir", str(data), "--no-cache"], tmp_path / "logs")
    assert codes == [2, 2]
    assert (
        printed[0][1].strip()
        == "error: world size 2 is larger than the 1 images; launch at most 1 process (torchrun --nproc-per-node)"
    )


@pytest.mark.slow  # two more processes; the inner loop keeps the plain two-rank sweep
def test_probe_under_two_ranks_equals_single_process(tmp_path: Path) -> None:
    annotations = random_voc_annotations(40, seed=1)
    ids = list(annotations)
    root = tmp_path / "data"
    write_voc(root, {i: annotations[i] for i in ids[:21]}, split="test")
    write_voc(root, {i: annotations[i] for i in ids[21:]}, split="trainval", seed=1)
    args = ["--data-dir", str(root), "--batch-size", "4", "--head", "probe"]  # 19 training images: shards of 12 and 7
    codes1, single, files1, _ = _run(tmp_path, "single", 1, [*args, "--save-head", str(tmp_path / "h1.safetensors")])
    codes2, multi, files2, printed = _run(tmp_path, "two", 2, [*args, "--save-head", str(tmp_path / "h2.safetensors")])
    assert codes1 == [0] and codes2 == [0, 0], printed
    assert (single.pop("head_file"), multi.pop("head_file")) == (
        str(tmp_path / "h1.safetensors"),
        str(tmp_path / "h2.safetensors"),
    )  # each run's own file
    assert multi == single  # shards of whole batches: the features, the fitted head, everything bit for bit
    assert single["head_fingerprint"] == multi["head_fingerprint"]
    assert [f.name for f in files1] == [f.name for f in files2] and len(files1) == 2  # probe + statistics, same keys
    assert (tmp_path / "h2.safetensors").is_file() and printed[1] == ("", "")


def test_other_commands_refuse_a_multi_rank_launch(tmp_path: Path) -> None:
    codes, _, printed = dist_scenarios.launch_cli(["compare", str(tmp_path / "nope.json")], tmp_path / "logs")
    assert codes == [2, 2]
    assert "under torchrun only sweep splits its work" in printed[0][1]


@pytest.mark.slow
def test_torchrun_sweep_equals_single_process(tmp_path: Path) -> None:
    """The real launcher and entry point: ``torchrun --nproc-per-node 2 -m csra_posthoc sweep ...``."""
    data = _voc(tmp_path / "data")
    args = ["--data-dir", str(data), "--batch-size", "4"]
    codes1, single, _, _ = _run(tmp_path, "single", 1, args)
    assert codes1 == [0]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "torchrun"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "csra_posthoc",
         *BASE, *args, "--cache-dir", str(out / "cache"), "--out", str(out / "results.json")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, torchrun_errors(run.stderr)
    _assert_close(json.loads((out / "results.json").read_text()), single)
    assert run.stdout.count("wrote ") == 1 and "baseline" in run.stdout  # one table and one "wrote", from rank 0


@pytest.mark.slow
def test_select_on_another_split_under_two_ranks(tmp_path: Path) -> None:
    """--select-on trainval under 2 ranks: extracted on every rank when either split is not cached
    (the evaluated one cached, the other not: the model is built and both go through extract),
    reused when both are; the results equal the single-process run's."""
    annotations = random_voc_annotations(40, seed=2)
    ids = list(annotations)
    root = tmp_path / "data"
    write_voc(root, {i: annotations[i] for i in ids[:21]}, split="test")
    write_voc(root, {i: annotations[i] for i in ids[21:]}, split="trainval", seed=1)
    args = ["--data-dir", str(root), "--batch-size", "4", "--bootstrap", "50"]
    codes, _, _, printed = _run(tmp_path, "two", 2, [*args, "--select-on", "none"])  # caches the evaluated split only
    assert codes == [0, 0], printed
    codes, mixed, files, printed = _run(tmp_path, "two", 2, [*args, "--select-on", "trainval"])
    assert codes == [0, 0] and len(files) == 2, printed
    out = tmp_path / "two"  # the same cache, without --quiet: rank 0 says what it reused
    argv = sweep_argv(
        *args, device="cpu", select_on="trainval", cache_dir=out / "cache", out=out / "results.json"
    )  # not --quiet
    codes, _, printed = dist_scenarios.launch_cli(argv, out / "logs-warm", world=2)
    warm = json.loads((out / "results.json").read_text())
    assert codes == [0, 0] and printed[0][0].count("no model built") == 2, printed
    codes, single, _, _ = _run(tmp_path, "single", 1, [*args, "--select-on", "trainval"])
    assert codes == [0]
    assert single["held_out"]["select_on"] == "trainval" and "held_out" in single["bootstrap"]
    assert mixed == single and warm == single
