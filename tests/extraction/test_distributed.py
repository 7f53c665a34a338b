"""torch.distributed plumbing: shards, ordered gathers, config agreement, failure propagation.

Multi-rank tests run 2 real gloo ranks on CPU (forked processes with torchrun's environment,
see dist_scenarios.launch; one slow test goes through torchrun itself) and compare what rank 0
gathered with the single-process answer, exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from csra_posthoc.defaults import LAUNCH_VARS
from csra_posthoc.errors import CSRAError
from csra_posthoc.extraction import distributed as D
from tests import dist_scenarios
from tests.helpers import torchrun_errors

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ single process: pure functions


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 500), world=st.integers(1, 17))
def test_shards_are_disjoint_contiguous_and_cover_every_item(total: int, world: int) -> None:
    if world > total:
        with pytest.raises(CSRAError, match=f"world size {world} is larger than the {total} images"):
            D.shard(total, 0, world)
        return
    parts = [D.shard(total, r, world) for r in range(world)]
    flat = [i for p in parts for i in p.indices]
    assert flat == list(range(total))  # none twice, none dropped, rank order = item order
    assert [p.count for p in parts] == parts[0].sizes
    assert max(parts[0].sizes) - min(parts[0].sizes) <= 1


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 300), world=st.integers(1, 9), align=st.integers(1, 40))
def test_aligned_shards_are_whole_batches_and_cover_every_item(total: int, world: int, align: int) -> None:
    if world > total:
        return
    parts = [D.shard(total, r, world, align=align) for r in range(world)]
    assert [i for p in parts for i in p.indices] == list(range(total))
    assert [p.count for p in parts] == parts[0].sizes and all(p.count >= 1 for p in parts)
    if -(-total // align) >= world:  # enough batches: every block starts on a batch boundary
        assert all(p.start % align == 0 for p in parts)
    assert {D.lockstep_steps(p, align) for p in parts} == {max(-(-p.count // align) for p in parts)}


@pytest.mark.parametrize("total, world, batch, steps", [(7, 2, 2, 2), (8, 2, 4, 1), (9, 4, 2, 2), (5, 1, 5, 1)])
def test_lockstep_steps_cover_the_largest_shard(total: int, world: int, batch: int, steps: int) -> None:
    parts = [D.shard(total, r, world) for r in range(world)]
    assert {D.lockstep_steps(p, batch) for p in parts} == {steps}
    assert (steps - 1) * batch < max(p.count for p in parts) <= steps * batch


def test_world_size_larger_than_images_is_one_line() -> None:
    with pytest.raises(CSRAError) as info:
        D.shard(3, 1, 4)
    assert str(info.value).startswith("world size 4 is larger than the 3 images; launch at most 3 processes")


def test_launch_env_single_partial_and_full() -> None:
    assert D.launch_env({}) is None
    full = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert D.launch_env(full) == {"rank": 1, "world_size": 2, "local_rank": 1}
    with pytest.raises(CSRAError, match="MASTER_ADDR, MASTER_PORT missing"):
        D.launch_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(CSRAError, match="inconsistent"):
        D.launch_env({**full, "RANK": "2"})


@pytest.mark.parametrize("text, expected", [("", D.DEFAULT_TIMEOUT_S), ("20", 20.0), ("2.5", 2.5)])
def test_timeout_from_environment(text: str, expected: float) -> None:
    assert D.timeout_seconds({D.TIMEOUT_ENV: text}) == expected


@pytest.mark.parametrize("text", ["0", "-3", "soon", "nan", "inf"])
def test_bad_timeout_names_the_variable(text: str) -> None:
    with pytest.raises(CSRAError, match=D.TIMEOUT_ENV):
        D.timeout_seconds({D.TIMEOUT_ENV: text})


def test_config_hash_ignores_key_order_and_sees_values() -> None:
    a = D.config_hash({"model": "test_resnet", "lams": [0, 0.1], "img_size": 64})
    assert a == D.config_hash({"img_size": 64, "lams": [0, 0.1], "model": "test_resnet"})
    assert a != D.config_hash({"img_size": 96, "lams": [0, 0.1], "model": "test_resnet"})


def test_device_under_torchrun_is_the_local_rank() -> None:
    assert D.rank_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(CSRAError, match="each rank uses cuda:LOCAL_RANK") as info:
        D.rank_device("cuda:1", 0)
    assert info.value.param == "device"
    if not torch.cuda.is_available():
        with pytest.raises(CSRAError, match="CUDA is not available"):
            D.rank_device("cuda", 0)


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    with D.distributed("cpu") as ctx:
        assert not ctx.active and ctx.is_main and D.is_main_process()
        part = D.shard_for(ctx, 5)
        x = torch.randn(5, 3)
        assert torch.equal(D.gather_tensors({"x": x, "maps": None}, part, ctx)["x"], x)
        assert D.gather_objects(list("abcde"), part, ctx) == list("abcde")
        assert D.check_config_agreement({"a": 1}, ctx) == D.config_hash({"a": 1})
        with (
            pytest.raises(ValueError, match="the original"),
            D.stage("extract", ctx),
        ):  # a single process keeps its own exception
            raise ValueError("the original")


def test_other_ranks_print_nothing_but_their_own_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    console = Console(record=True)
    monkeypatch.setenv("RANK", "0")
    assert D.main_console(console) is console
    monkeypatch.setenv("RANK", "1")
    silent = D.main_console(console)
    silent.print("a table")
    assert silent is not console and silent.file.getvalue() == ""  # type: ignore[attr-defined]
    assert not D.should_print_error(D.RankFailed("rank 0 failed at 'x': y", [0]))
    assert not D.should_print_error(CSRAError("the same arguments, the same refusal on every rank"))  # rank 0 says it
    assert D.should_print_error(D.rank_specific(CSRAError("rank 1: lost the other ranks")))


# ------------------------------------------------------------------ two gloo ranks


def _errors(out: Path) -> dict[int, list[str]]:
    """rank -> [exception type, printed?, seconds, message] from each rank's error file."""
    return {int(p.stem[4:]): p.read_text().rstrip("\n").split("\t", 3) for p in out.glob("rank*.txt")}


def _check_gathered(results: dict, counts: list[int]) -> None:
    for n in counts:
        fields, ids = dist_scenarios.full_fields(n)
        got = results[n]["fields"]
        assert set(got) == set(fields)
        for name, expected in fields.items():
            if expected is None:
                assert got[name] is None
            else:
                assert got[name].dtype == expected.dtype and torch.equal(got[name], expected), name
        assert results[n]["ids"] == ids


@pytest.mark.slow
def test_two_ranks_gather_equals_single_process(tmp_path: Path) -> None:
    counts = [7, 8, 2]  # 7 does not divide by 2; 2 gives each rank one item
    codes, _ = dist_scenarios.launch("gather", tmp_path, counts)
    assert codes == [0, 0], _errors(tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    _check_gathered(rank0, counts)
    for n in counts:  # the other rank holds nothing gathered, and the two blocks were disjoint
        assert rank1[n]["fields"] is None and rank1[n]["ids"] is None
        assert set(rank0[n]["indices"]).isdisjoint(rank1[n]["indices"])
    assert rank0[7]["indices"] == [0, 1, 2, 3] and rank1[7]["indices"] == [4, 5, 6]
    for key in ("weight", "bias"):  # rank 0's head reached rank 1 bit for bit
        assert rank0["head"][key].dtype == rank1["head"][key].dtype and torch.equal(
            rank0["head"][key], rank1["head"][key]
        )
    assert rank0["max"] == rank1["max"] == [1.0, 0.0]
    assert rank0["objects"] == [{"rank": 0}, {"rank": 1}] and rank1["objects"] is None
    assert rank0["hash"] == rank1["hash"]
    assert rank0["decision"] == rank1["decision"] == {"reuse": True, "path": "p"}


def test_ranks_with_different_arguments_are_refused_on_every_rank(tmp_path: Path) -> None:
    codes, _ = dist_scenarios.launch("mismatch", tmp_path)
    assert codes == [2, 2]
    errors = _errors(tmp_path)
    assert set(errors) == {0, 1}
    assert [errors[r][1] for r in (0, 1)] == ["True", "False"]  # the same refusal everywhere: rank 0 says it once
    for kind, _, _, message in errors.values():
        assert kind == "CSRAError"
        assert message == (
            "ranks were launched with different arguments: rank 1 differs from rank 0 (img_size: 64 vs 96); launch every rank with the same command line"
        )


@pytest.mark.slow
def test_a_rank_that_raises_stops_every_rank_with_its_reason(tmp_path: Path) -> None:
    timeout = 20.0
    codes, wall = dist_scenarios.launch("raise", tmp_path, timeout_s=timeout)
    assert codes == [2, 2]
    assert wall < timeout  # the status collective, not the timeout, ended it
    errors = _errors(tmp_path)
    reason = "rank 1 failed at 'extract': image /data/broken.jpg cannot be decoded (truncated file); remove it or pass skip_missing"
    assert [errors[r][3] for r in (0, 1)] == [reason, reason]
    assert [errors[r][0] for r in (0, 1)] == ["RankFailed", "RankFailed"]
    assert [errors[r][1] for r in (0, 1)] == ["True", "False"]  # rank 0 prints it, once
    assert float(errors[0][2]) < timeout / 2


def test_the_same_failure_on_every_rank_is_said_once(tmp_path: Path) -> None:
    codes, _ = dist_scenarios.launch("all_fail", tmp_path)
    assert codes == [2, 2]
    errors = _errors(tmp_path)
    assert {errors[r][3] for r in (0, 1)} == {
        "all 2 ranks failed at 'load': data_dir /nope: not found; pass the dataset root"
    }


@pytest.mark.slow
def test_a_bug_on_one_rank_keeps_its_traceback_there_and_is_one_line_elsewhere(tmp_path: Path, capfd) -> None:
    codes, wall = dist_scenarios.launch("bug", tmp_path, timeout_s=20.0)
    assert codes == [2, 1] and wall < 20.0
    errors = _errors(tmp_path)
    assert set(errors) == {0}
    assert errors[0][3] == "rank 1 failed at 'extract': RuntimeError: shape mismatch in the hooked layer"
    assert "Traceback" in capfd.readouterr().err


def test_world_size_larger_than_images_refused_on_every_rank(tmp_path: Path) -> None:
    codes, _ = dist_scenarios.launch("too_many", tmp_path, [1])
    assert codes == [2, 2]
    errors = _errors(tmp_path)
    assert {errors[r][3] for r in (0, 1)} == {
        "world size 2 is larger than the 1 images; launch at most 1 process (torchrun --nproc-per-node)"
    }


@pytest.mark.slow  # waits out a 3 s timeout by design
def test_a_hung_rank_ends_the_others_at_the_timeout(tmp_path: Path) -> None:
    timeout = 3.0
    codes, _ = dist_scenarios.launch("hang", tmp_path, timeout_s=timeout, limit_s=40.0)
    assert codes[0] == 2  # rank 1 never answers: the launcher kills it, as torchrun would
    kind, _, waited, message = _errors(tmp_path)[0]
    assert kind == "CSRAError" and message.startswith("rank 0: lost the other ranks at 'extract'")
    assert D.TIMEOUT_ENV in message and "\n" not in message
    assert 0.8 * timeout <= float(waited) <= timeout + 10


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_others_with_one_line(tmp_path: Path) -> None:
    codes, _ = dist_scenarios.launch("die", tmp_path, timeout_s=20.0, grace_s=25.0)
    assert codes[1] == 3 and codes[0] == 2
    kind, _, waited, message = _errors(tmp_path)[0]
    assert kind == "CSRAError" and message.startswith("rank 0: lost the other ranks at 'gather")
    assert "\n" not in message and float(waited) < 20.0


@pytest.mark.slow
def test_torchrun_launch_gathers_like_a_single_process(tmp_path: Path) -> None:
    """The real launcher: torchrun starts the ranks and sets their environment."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        D.TIMEOUT_ENV: "60",
    }
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "tests" / "dist_scenarios.py"), "gather", str(tmp_path), "7", "8"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert run.returncode == 0, torchrun_errors(run.stderr)
    _check_gathered(torch.load(tmp_path / "rank0.pt", weights_only=False), [7, 8])
    assert time.perf_counter() - start < 180


@pytest.mark.slow
def test_python_dash_m_runs_the_cli() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "csra_posthoc", "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0 and run.stdout.startswith("csra-posthoc ")
