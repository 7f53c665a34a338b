"""Worker for tests/extraction/test_distributed.py, launched by ``torchrun --nproc-per-node 2``.

``python dist_scenarios.py SCENARIO OUT_DIR [N ...]``: each rank runs SCENARIO and writes what
it saw to ``OUT_DIR/rank<r>.pt`` (results) or ``OUT_DIR/rank<r>.txt`` (its error line and how
long it waited). The test, in the parent process, compares that with the single-process answer.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from csra_posthoc.defaults import LAUNCH_VARS
from csra_posthoc.errors import CSRAError
from csra_posthoc.extraction.distributed import (
    all_reduce_max,
    broadcast_object,
    broadcast_state_dict,
    check_config_agreement,
    distributed,
    gather_object,
    gather_objects,
    gather_tensors,
    shard_for,
    should_print_error,
    stage,
)  # fmt: skip


def full_fields(n: int) -> tuple[dict[str, torch.Tensor | None], list[str]]:
    """What a single process would compute for ``n`` images (seeded, so every rank agrees)."""
    g = torch.Generator().manual_seed(n)
    fields = {
        "avg": torch.randn(n, 5, generator=g),
        "max": torch.randn(n, 5, generator=g).double(),
        "attn": torch.randn(n, 5, 3, generator=g),
        "labels": torch.randint(0, 2, (n, 5), generator=g, dtype=torch.int8),
        "maps": None,
    }
    return fields, [f"img{i:05d}" for i in range(n)]


def gather(ctx, out: Path, counts: list[int]) -> None:
    results = {}
    for n in counts:
        part = shard_for(ctx, n)
        fields, ids = full_fields(n)
        mine = {k: None if v is None else v[part.start : part.stop].clone() for k, v in fields.items()}
        with stage("extract", ctx):
            pass
        gathered = gather_tensors(mine, part, ctx)
        gathered_ids = gather_objects(ids[part.start : part.stop], part, ctx, "ids")
        results[n] = {"fields": gathered, "ids": gathered_ids, "indices": list(part.indices)}
    head = {"weight": torch.randn(4, 3), "bias": torch.arange(4, dtype=torch.float64)} if ctx.is_main else None
    torch.manual_seed(100 + ctx.rank)  # the other ranks' own draws must not matter
    results["head"] = broadcast_state_dict(head, ctx)
    results["max"] = all_reduce_max([float(ctx.rank), -float(ctx.rank)], ctx)
    results["objects"] = gather_object({"rank": ctx.rank}, ctx)
    results["decision"] = broadcast_object({"reuse": True, "path": "p"} if ctx.is_main else {"reuse": False}, ctx)
    results["hash"] = check_config_agreement({"model": "test_resnet", "img_size": 64}, ctx)
    torch.save(results, out / f"rank{ctx.rank}.pt")


def mismatch(ctx, out: Path, _: list[int]) -> None:
    check_config_agreement({"model": "test_resnet", "img_size": 64 + 32 * ctx.rank, "lams": [0, 0.1]}, ctx)


def raise_in_loop(ctx, out: Path, _: list[int], bug: bool = False) -> None:
    with stage("extract", ctx):
        if ctx.rank == 1:
            if bug:
                raise RuntimeError("shape mismatch in the hooked layer")
            raise CSRAError("image /data/broken.jpg cannot be decoded (truncated file); remove it or pass skip_missing")
        time.sleep(0.5)  # rank 0 is still busy when rank 1 fails
    part = shard_for(ctx, 10)
    gather_tensors({"avg": torch.zeros(part.count, 2)}, part, ctx)  # never reached


def raise_bug(ctx, out: Path, n: list[int]) -> None:
    raise_in_loop(ctx, out, n, bug=True)


def all_fail(ctx, out: Path, _: list[int]) -> None:
    with stage("load", ctx):
        raise CSRAError("data_dir /nope: not found; pass the dataset root")


def die(ctx, out: Path, _: list[int]) -> None:
    part = shard_for(ctx, 10)
    if ctx.rank == 1:
        os._exit(3)  # killed outright (OOM killer, segfault): no status collective from it
    gather_tensors({"avg": torch.zeros(part.count, 2)}, part, ctx)


def hang(ctx, out: Path, _: list[int]) -> None:
    if ctx.rank == 1:
        time.sleep(120)  # a hung rank: never reaches the status collective
    with stage("extract", ctx):
        pass


def too_many(ctx, out: Path, n: list[int]) -> None:
    shard_for(ctx, n[0])  # deterministic: every rank refuses at once, no collective needed


SCENARIOS = {
    "gather": gather,
    "mismatch": mismatch,
    "raise": raise_in_loop,
    "bug": raise_bug,
    "hang": hang,
    "die": die,
    "all_fail": all_fail,
    "too_many": too_many,
}


def run(name: str, out: Path, counts: list[int]) -> int:
    """One rank's run of scenario ``name``: 0 when it went through, 2 after writing its error line."""
    with distributed("cpu") as ctx:
        start = time.perf_counter()
        try:
            SCENARIOS[name](ctx, out, counts)
        except CSRAError as exc:
            printed = should_print_error(exc)
            (out / f"rank{ctx.rank}.txt").write_text(
                f"{type(exc).__name__}\t{printed}\t{time.perf_counter() - start:.2f}\t{exc}\n"
            )
            return 2
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, timeout_s: float, name: str, out: Path, counts: list[int]) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        CSRA_POSTHOC_DIST_TIMEOUT=str(timeout_s),
    )  # fmt: skip
    torch.set_num_threads(1)
    code = 1
    try:
        code = run(name, out, counts)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)  # a forked child must not run the parent's (pytest's) exit handlers


def launch(
    name: str,
    out: Path,
    counts: Sequence[int] = (),
    world: int = 2,
    timeout_s: float = 20.0,
    limit_s: float = 60.0,
    grace_s: float = 2.0,
) -> tuple[list[int | None], float]:
    """Fork ``world`` ranks on this machine (torchrun's environment, without its start-up cost).

    Like torchrun, once one rank exits non-zero the others are stopped (after ``grace_s`` seconds
    to finish on their own). Returns each rank's exit
    code (None: it had to be killed) and the wall time until the ranks were done.
    """
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(r, world, port, timeout_s, name, out, list(counts))) for r in range(world)
    ]
    start = time.perf_counter()
    for p in procs:
        p.start()
    deadline = start + limit_s
    while time.perf_counter() < deadline and any(p.exitcode is None for p in procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            break
        time.sleep(0.02)
    for p in procs:
        p.join(timeout=max(0.0, min(grace_s, deadline - time.perf_counter())))
    wall = time.perf_counter() - start
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join()
    return [None if c is None or c < 0 else c for c in codes], wall


def _cli_child(rank: int, world: int, port: int, timeout_s: float, argv: list[str], out: Path) -> None:
    """One rank of the real CLI (world 1: a plain single process, no launcher variables)."""
    if world > 1:
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
            CSRA_POSTHOC_DIST_TIMEOUT=str(timeout_s),
        )  # fmt: skip
    else:
        for var in LAUNCH_VARS:
            os.environ.pop(var, None)
    torch.set_num_threads(1)
    sys.stdout = open(out / f"rank{rank}.stdout", "w")
    sys.stderr = open(out / f"rank{rank}.stderr", "w")
    sys.argv = ["csra-posthoc", *argv]
    code = 1
    try:
        from csra_posthoc.cli.app import main as cli_main

        cli_main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def launch_cli(
    argv: Sequence[str] | Callable[[int], Sequence[str]],
    out: Path,
    world: int = 2,
    timeout_s: float = 30.0,
    limit_s: float = 120.0,
) -> tuple[list[int | None], float, dict[int, tuple[str, str]]]:
    """Run the real CLI (``csra-posthoc ARGV``) as ``world`` forked ranks, as torchrun would
    (``argv`` may depend on the rank); returns exit codes, wall time and each rank's (stdout, stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    args = [list(argv(r)) if callable(argv) else list(argv) for r in range(world)]
    procs = [ctx.Process(target=_cli_child, args=(r, world, port, timeout_s, args[r], out)) for r in range(world)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    deadline = start + limit_s
    while time.perf_counter() < deadline and any(p.exitcode is None for p in procs):
        time.sleep(0.02)
    wall = time.perf_counter() - start
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join()
    printed = {r: ((out / f"rank{r}.stdout").read_text(), (out / f"rank{r}.stderr").read_text()) for r in range(world)}
    return [None if c is None or c < 0 else c for c in codes], wall, printed


def main() -> int:
    return run(sys.argv[1], Path(sys.argv[2]), [int(v) for v in sys.argv[3:]])


if __name__ == "__main__":
    sys.exit(main())
