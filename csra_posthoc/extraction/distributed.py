"""Several processes, one result: torch.distributed plumbing for a ``torchrun`` launch.

``torchrun --nproc-per-node N -m csra_posthoc sweep ...`` starts N copies of the CLI with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` in their
environment. :func:`distributed` turns that into a process group (nccl on CUDA, gloo on CPU),
with a timeout on every collective; without those variables it is a no-op and every helper
below degrades to the single-process answer, so callers need no ``if distributed`` branches.

The contract the helpers keep (docs/method.md is unaffected: only who computes which rows):

- :func:`shard` gives rank r a contiguous, deterministic block of the N items; blocks are
  disjoint and cover every item, their sizes differ by at most one;
- :func:`gather_tensors` / :func:`gather_objects` put the blocks back on rank 0 in rank order,
  which is the original item order, bit for bit (padding to equal sizes is trimmed away);
- :func:`check_config_agreement` refuses, on every rank, ranks launched with different arguments;
- :func:`stage` makes one rank's failure every rank's one-line :class:`RankFailed`, instead
  of a hang; the process group's timeout is the last resort for a rank that hangs or dies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from rich.console import Console

from ..defaults import LAUNCH_VARS
from ..errors import CSRAError, first_line

TIMEOUT_ENV = "CSRA_POSTHOC_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0  # long enough for a slow rank's last batch, short enough that a hang is noticed
CSRAErrorT = TypeVar("CSRAErrorT", bound=CSRAError)


class RankFailed(CSRAError):
    """One or more ranks failed inside a :func:`stage`; every rank raises this same one line."""

    def __init__(self, message: str, failed_ranks: Sequence[int]) -> None:
        super().__init__(message)
        self.failed_ranks = tuple(failed_ranks)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size``, and the device collectives use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: single process, no process group
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # cuda:LOCAL_RANK under nccl
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def active(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """nccl moves CUDA tensors only; gloo moves CPU tensors."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


# --------------------------------------------------------------------------- launch


def launch_env(env: Mapping[str, str] | None = None) -> dict[str, int] | None:
    """``{rank, world_size, local_rank}`` when torchrun (or an equivalent launcher) started us, else None.

    A partial set of the variables is refused: it means a hand-made launch that would hang.
    """
    env = os.environ if env is None else env
    present = [v for v in LAUNCH_VARS if v in env]
    if not present:
        return None
    missing = [v for v in LAUNCH_VARS if v not in env]
    if missing:
        raise CSRAError(
            f"distributed launch: {', '.join(present)} set but {', '.join(missing)} missing; "
            "launch with torchrun (it sets them all) or unset them for a single-process run"
        )
    try:
        info = {"rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]), "local_rank": int(env["LOCAL_RANK"])}
    except ValueError:
        raise CSRAError(
            "distributed launch: RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun"
        ) from None
    if info["world_size"] < 1 or not 0 <= info["rank"] < info["world_size"] or info["local_rank"] < 0:
        raise CSRAError(
            f"distributed launch: RANK {info['rank']} / WORLD_SIZE {info['world_size']} is inconsistent; launch with torchrun"
        )
    return info


def timeout_seconds(env: Mapping[str, str] | None = None) -> float:
    """The collectives' timeout: ``$CSRA_POSTHOC_DIST_TIMEOUT`` seconds, default :data:`DEFAULT_TIMEOUT_S`."""
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise CSRAError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds, e.g. 300")
    return value


def rank_device(device: str | torch.device, local_rank: int) -> torch.device:
    """The device a rank computes on: ``cuda`` means ``cuda:LOCAL_RANK`` (one GPU per rank)."""
    dev = str(device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return torch.device("cpu")
    if dev == "cuda":
        if not torch.cuda.is_available():
            raise CSRAError(f"device {device}: CUDA is not available here; use device cpu or auto", param="device")
        if local_rank >= torch.cuda.device_count():
            raise rank_specific(
                CSRAError(
                    f"device cuda: LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                    "launch at most one process per GPU (torchrun --nproc-per-node)",
                    param="device",
                )
            )
        return torch.device("cuda", local_rank)
    if dev.startswith("cuda:"):
        raise CSRAError(
            f"device {dev}: under torchrun each rank uses cuda:LOCAL_RANK; pass device cuda", param="device"
        )
    raise CSRAError(f"device {dev}: choose auto, cpu or cuda", param="device")


def _single_device(device: str | torch.device) -> torch.device:
    """A single process's device (any ``cuda:N``); the extraction checks it further."""
    dev = str(device)
    if dev == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise CSRAError(f"device {dev}: CUDA is not available here; use device cpu or auto", param="device")
    try:
        return torch.device(dev)
    except RuntimeError:
        raise CSRAError(f"device {dev}: choose auto, cpu or cuda", param="device") from None


@contextmanager
def distributed(device: str | torch.device = "auto", timeout_s: float | None = None) -> Iterator[DistContext]:
    """The process group for a torchrun launch (torn down on exit), or a single-process context.

    nccl when the ranks compute on CUDA, gloo on CPU; every collective times out after
    ``timeout_s`` (default :func:`timeout_seconds`). A group that is already up (a caller
    initialised it) is used as is and left up.
    """
    timeout = timeout_seconds() if timeout_s is None else float(timeout_s)
    info = launch_env()
    if info is None or info["world_size"] == 1:
        yield DistContext(device=_single_device(device), timeout_s=timeout)
        return
    if not dist.is_available():
        raise CSRAError("distributed launch: this PyTorch build has no torch.distributed; run a single process")
    dev = rank_device(device, info["local_rank"])
    backend = "nccl" if dev.type == "cuda" else "gloo"
    ctx = DistContext(info["rank"], info["world_size"], info["local_rank"], backend, dev, timeout)
    if dist.is_initialized():
        yield ctx
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout), **kwargs)
    except (RuntimeError, ValueError) as exc:
        raise rank_specific(
            CSRAError(
                f"rank {ctx.rank}: could not join the other {ctx.world_size - 1} ranks within {timeout:g} s "
                f"({first_line(exc, 120)}); check MASTER_ADDR/MASTER_PORT or the torchrun rendezvous flags"
            )
        ) from None
    try:
        yield ctx
    finally:
        dist.destroy_process_group()


def current() -> DistContext:
    """The context of the process group that is up (single-process context when none is)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    backend = dist.get_backend()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local, backend, device, timeout_seconds())


# --------------------------------------------------------------------------- rank-0-only output


def is_main_process() -> bool:
    """True on rank 0, and in a single process; before the group is up, from ``$RANK``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")


def main_console(console: Console | None = None) -> Console:
    """``console`` on rank 0; a silenced console elsewhere, so N ranks print one table.

    Errors do not go through it: the CLI prints them (see :func:`should_print_error`).
    """
    if is_main_process():
        return console if console is not None else Console(stderr=True)
    return Console(file=io.StringIO(), quiet=True)


def rank_specific(exc: CSRAErrorT) -> CSRAErrorT:
    """Mark ``exc`` as this rank's own (lost contact, could not join, no GPU for its LOCAL_RANK):
    the other ranks do not share it, so every rank that has one prints it."""
    exc.rank_specific = True  # type: ignore[attr-defined]
    return exc


def should_print_error(exc: BaseException) -> bool:
    """Whether this rank prints ``exc``: rank 0 prints everything; the others only errors marked
    :func:`rank_specific`. Any other error is one every rank shares (the same arguments, files and
    data on each; a failure inside a stage arrives as the same :class:`RankFailed` on all), so
    rank 0's line says it once instead of once per rank."""
    return is_main_process() or bool(getattr(exc, "rank_specific", False))


# --------------------------------------------------------------------------- sharding


@dataclass(frozen=True)
class Shard:
    """Rank ``rank``'s block ``[start, stop)`` of ``total`` items; ``sizes`` are every rank's block sizes.

    ``align``: blocks are whole runs of ``align`` items (batches), but the last.
    """

    rank: int
    world_size: int
    start: int
    stop: int
    total: int
    align: int = 1

    @property
    def count(self) -> int:
        return self.stop - self.start

    @property
    def indices(self) -> range:
        return range(self.start, self.stop)

    @property
    def sizes(self) -> list[int]:
        return [
            _block(self.total, r, self.world_size, self.align)[1]
            - _block(self.total, r, self.world_size, self.align)[0]
            for r in range(self.world_size)
        ]


def _block(total: int, rank: int, world_size: int, align: int) -> tuple[int, int]:
    units = -(-total // align)
    base, extra = divmod(units, world_size)
    first = rank * base + min(rank, extra)
    return min(first * align, total), min((first + base + (rank < extra)) * align, total)


def shard(total: int, rank: int = 0, world_size: int = 1, what: str = "images", align: int = 1) -> Shard:
    """Rank ``rank``'s contiguous block of ``total`` items: the first ``total % world_size``
    ranks take one extra, so no item is dropped or repeated, and rank order is item order.

    ``align`` (the batch size): blocks of whole batches, so that every rank's batches are the
    single process's batches and batch-dependent kernels give bit-identical rows; used when
    there are at least ``world_size`` batches, else items are spread one by one.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}")
    if world_size > total:
        most = f"at most {total} process{'es' if total > 1 else ''}" if total else "a single process"
        raise CSRAError(
            f"world size {world_size} is larger than the {total} {what}; launch {most} (torchrun --nproc-per-node)"
        )
    if align < 1 or -(-total // align) < world_size:
        align = 1
    start, stop = _block(total, rank, world_size, align)
    return Shard(rank, world_size, start, stop, total, align)


def shard_for(ctx: DistContext, total: int, what: str = "images", align: int = 1) -> Shard:
    """:func:`shard` for this process."""
    return shard(total, ctx.rank, ctx.world_size, what, align)


def lockstep_steps(part: Shard, batch_size: int) -> int:
    """Batches the largest shard needs: every rank loops this often (a rank whose shard is one
    item shorter runs an empty last step) so that a per-batch :func:`check_status` pairs up."""
    if batch_size < 1:
        raise CSRAError(f"batch_size {batch_size}: must be at least 1", param="batch_size")
    return -(-max(part.sizes) // batch_size)


# --------------------------------------------------------------------------- gather / broadcast


def _check_block(name: str, rows: int, part: Shard) -> None:
    if rows != part.count:
        raise ValueError(f"{name}: rank {part.rank} has {rows} rows but its shard holds {part.count} items")


def gather_tensor(tensor: torch.Tensor, part: Shard, ctx: DistContext, name: str = "tensor") -> torch.Tensor | None:
    """Every rank's ``(count, ...)`` block stacked on rank 0 in item order (CPU); None on the others.

    Blocks are padded to the largest shard for the collective and trimmed after, so the result
    equals the single-process concatenation bit for bit. Trailing shapes and dtypes must agree.
    """
    _check_block(name, tensor.shape[0], part)
    if not ctx.active:
        return tensor.cpu()
    layouts: list[Any] = [None] * ctx.world_size
    _collective(f"gather {name}", ctx, dist.all_gather_object, layouts, (tuple(tensor.shape[1:]), str(tensor.dtype)))
    if any(layout != layouts[0] for layout in layouts):
        raise ValueError(f"{name}: ranks disagree on trailing shape / dtype: {layouts}")
    sizes = part.sizes
    width = max(sizes)
    padded = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype, device=ctx.comm_device)
    padded[: tensor.shape[0]] = tensor.to(ctx.comm_device)
    buffers = [torch.empty_like(padded) for _ in range(ctx.world_size)] if ctx.is_main else None
    _collective(f"gather {name}", ctx, dist.gather, padded, buffers, dst=0)
    if buffers is None:
        return None
    return torch.cat([buf[:n].cpu() for buf, n in zip(buffers, sizes, strict=True)])


def gather_tensors(
    tensors: Mapping[str, torch.Tensor | None], part: Shard, ctx: DistContext
) -> dict[str, torch.Tensor | None] | None:
    """:func:`gather_tensor` for each field (the statistics' ``avg``, ``max``, ``attn``, ...), one
    at a time to bound rank 0's memory; a None field (``maps`` not kept) stays None on every rank."""
    names = sorted(tensors)
    if ctx.active:
        present: list[Any] = [None] * ctx.world_size
        _collective("gather", ctx, dist.all_gather_object, present, [(n, tensors[n] is not None) for n in names])
        if any(p != present[0] for p in present):
            raise ValueError(f"ranks disagree on the gathered fields: {present}")
    out: dict[str, torch.Tensor | None] = {}
    for n in names:
        value = tensors[n]
        out[n] = None if value is None else gather_tensor(value, part, ctx, n)
    return out if ctx.is_main else None


def gather_objects(items: Sequence[Any], part: Shard, ctx: DistContext, name: str = "items") -> list[Any] | None:
    """Every rank's list of ``count`` picklable items (image ids, paths) joined on rank 0 in item order."""
    _check_block(name, len(items), part)
    if not ctx.active:
        return list(items)
    lists: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    _collective(f"gather {name}", ctx, dist.gather_object, list(items), lists, dst=0)
    if lists is None:
        return None
    return [item for block in lists for item in block]


def gather_object(obj: Any, ctx: DistContext) -> list[Any] | None:
    """One small picklable object per rank (timings, identity diffs), on rank 0 in rank order."""
    if not ctx.active:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    _collective("gather", ctx, dist.gather_object, obj, out, dst=0)
    return out


def all_reduce_max(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise max over ranks (the identity check's max |diff| must be the whole split's)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.comm_device)
    if ctx.active:
        _collective("all_reduce", ctx, dist.all_reduce, t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's small picklable ``obj`` (a cache hit decision, the probe's info) on every rank."""
    if not ctx.active:
        return obj
    box = [obj if ctx.is_main else None]
    _collective("broadcast", ctx, dist.broadcast_object_list, box, src=0)
    return box[0]


def main_decides_reuse(ctx: DistContext, decide: Callable[[], bool], stage_name: str | None = None) -> bool:
    """Whether a run reuses its cache, as rank 0 decides: only rank 0 calls ``decide`` (it alone
    reads, locks and writes the cache; the others never touch the folder), and every rank gets
    its verdict, so all take the same branch (reuse, or compute their shard). ``stage_name``: run
    ``decide`` inside :func:`stage`, for a decision that reads files and may fail. A single
    process just calls ``decide``. Extraction, the probe and the sweep's memo lookup share it."""
    verdict = False
    with stage(stage_name, ctx) if stage_name is not None else nullcontext():
        if ctx.is_main:
            verdict = bool(decide())
    return bool(broadcast_object(verdict, ctx))


def broadcast_state_dict(state: Mapping[str, torch.Tensor] | None, ctx: DistContext) -> dict[str, torch.Tensor]:
    """Rank 0's ``state`` (a fitted probe head) on every rank, bit for bit, as CPU tensors.

    The layout (names, shapes, dtypes) travels as one small object, the values as tensors.
    """
    if not ctx.active:
        if state is None:
            raise ValueError("broadcast_state_dict: rank 0 must pass the state")
        return {k: v.detach().cpu() for k, v in state.items()}
    layout: list[Any] = [None]
    if ctx.is_main:
        if state is None:
            raise ValueError("broadcast_state_dict: rank 0 must pass the state")
        layout = [[(k, tuple(v.shape), v.dtype) for k, v in state.items()]]
    _collective("broadcast", ctx, dist.broadcast_object_list, layout, src=0)
    out = {}
    for key, shape, dtype in layout[0]:
        if ctx.is_main:
            buf = state[key].detach().to(ctx.comm_device, dtype).contiguous()  # type: ignore[index]
        else:
            buf = torch.empty(shape, dtype=dtype, device=ctx.comm_device)
        _collective("broadcast", ctx, dist.broadcast, buf, src=0)
        out[key] = buf.cpu()
    return out


# --------------------------------------------------------------------------- config agreement


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of ``config`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    for key in sorted(set(a) | set(b)):
        if json.dumps(a.get(key), sort_keys=True, default=str) != json.dumps(b.get(key), sort_keys=True, default=str):
            return f"{key}: {a.get(key, '<unset>')!r} vs {b.get(key, '<unset>')!r}"
    return "same keys and values"


def check_config_agreement(config: Mapping[str, Any], ctx: DistContext) -> str:
    """Refuse, on every rank, ranks launched with different arguments; returns the shared hash.

    Each rank contributes a 63-bit prefix of its :func:`config_hash` to an all_gather; on a
    mismatch the configurations themselves are gathered to name the first differing key.
    """
    digest = config_hash(config)
    if not ctx.active:
        return digest
    mine = torch.tensor([int(digest[:15], 16)], dtype=torch.int64, device=ctx.comm_device)
    hashes = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    _collective("config check", ctx, dist.all_gather, hashes, mine)
    values = [int(h.item()) for h in hashes]
    if all(v == values[0] for v in values):
        return digest
    configs: list[Any] = [None] * ctx.world_size
    _collective("config check", ctx, dist.all_gather_object, configs, dict(config))
    differing = [r for r, v in enumerate(values) if v != values[0]]
    names = ", ".join(str(r) for r in differing)
    raise CSRAError(
        f"ranks were launched with different arguments: rank{'s' if len(differing) > 1 else ''} {names} "
        f"differ{'' if len(differing) > 1 else 's'} from rank 0 ({_first_difference(configs[0], configs[differing[0]])}); "
        "launch every rank with the same command line"
    )


# --------------------------------------------------------------------------- failure propagation


def _collective(stage_name: str, ctx: DistContext, fn, *args, **kwargs) -> Any:
    """Run a collective; a timeout or a dead peer becomes one line instead of a backend traceback."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # DistBackendError, gloo's timeout / connection errors
        raise rank_specific(
            CSRAError(
                f"rank {ctx.rank}: lost the other ranks at '{stage_name}' (one died, hung, or took longer than "
                f"{ctx.timeout_s:g} s; raise {TIMEOUT_ENV} if it is merely slow): {_backend_line(exc)}"
            )
        ) from None


def _backend_line(exc: BaseException) -> str:
    """A backend error's first line without gloo's ``[/path/to/file.cc:78]`` prefix."""
    return re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc, 200))[:100]


def failure_reason(exc: BaseException) -> str:
    """One line for another rank's report: a user error's own line; a bug's type and first line."""
    if isinstance(exc, CSRAError):
        return first_line(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError's older name
        return f"out of memory ({first_line(exc, 80)}); try a smaller batch_size"
    return f"{type(exc).__name__}: {first_line(exc)}"


def check_status(stage_name: str, ctx: DistContext, error: BaseException | None = None) -> None:
    """The status collective at a stage boundary: every rank says ok or failed; if any failed,
    every rank raises :class:`RankFailed` naming the failed ranks and the first one's reason.

    A rank that failed with a bug (not a :class:`CSRAError`) re-raises its own exception after
    the collective, so its traceback survives; the others still get the one line.
    """
    if not ctx.active:
        if error is not None:
            raise error
        return
    flags = torch.zeros(ctx.world_size, dtype=torch.int32, device=ctx.comm_device)
    flags[ctx.rank] = int(error is not None)
    try:
        _collective(stage_name, ctx, dist.all_reduce, flags)
    except CSRAError:
        if error is not None:  # its own failure says more than "lost the others"
            raise (rank_specific(error) if isinstance(error, CSRAError) else error) from None
        raise
    failed = [r for r, f in enumerate(flags.tolist()) if f]
    if not failed:
        return
    reasons: list[Any] = [None] * ctx.world_size
    _collective(stage_name, ctx, dist.all_gather_object, reasons, failure_reason(error) if error is not None else None)
    if len(failed) == ctx.world_size and len(set(reasons)) == 1:  # the same refusal everywhere: say it once
        failure = RankFailed(f"all {ctx.world_size} ranks failed at '{stage_name}': {reasons[0]}", failed)
    else:
        others = (
            f" (also failed: rank{'s' if len(failed) > 2 else ''} {', '.join(map(str, failed[1:]))})"
            if len(failed) > 1
            else ""
        )
        failure = RankFailed(f"rank {failed[0]} failed at '{stage_name}': {reasons[failed[0]]}{others}", failed)
    if error is not None and not isinstance(error, CSRAError):
        raise error
    raise failure from error


@contextmanager
def stage(name: str, ctx: DistContext) -> Iterator[None]:
    """Run the body on every rank; afterwards all ranks meet in :func:`check_status`.

    A rank whose body raises still joins the collective, so the others learn of it at once
    (a one-line :class:`RankFailed`) instead of waiting in the next gather until the timeout.
    KeyboardInterrupt is not caught: Ctrl-C reaches every rank through torchrun.
    """
    error: Exception | None = None
    try:
        yield
    except Exception as exc:
        error = exc
    check_status(name, ctx, error)
