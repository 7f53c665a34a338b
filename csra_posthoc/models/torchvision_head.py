"""Any torchvision classifier's head, read off its traced forward graph instead of family rules.

torchvision models have no ``forward_features`` / ``forward_head`` split, and they pool in many
ways: an ``avgpool`` module (ResNet, RegNet, GoogLeNet, Swin after a permute), a functional pool
after a ReLU (DenseNet), ``x.mean([2, 3])`` (MNASNet, ShuffleNetV2), a pool at the end of the
classifier (SqueezeNet: dropout -> 1x1 conv -> ReLU -> pool, a per-location head whose score at
each location is known exactly) or at its start (MaxViT, ConvNeXt's ``LayerNorm2d`` after it).
So the forward is traced (``torch.fx``) once and split at the **last global average pool**:

* the pre-pool map (the pool's input) is what the backbone returns, the locations CSRA attends over;
* what follows the pool is the head. When it is a LayerNorm over channels, then an affine map, it
  is read as :class:`~csra_posthoc.heads.location.LocationHead` (the norm applied per location with
  the pooled vector's statistics, as for timm's norm-after-pool heads); the affine map is the
  classifier's own weights when it is one linear layer, else read off at 0 and the unit vectors
  and checked on a random direction (SqueezeNet's flatten: the identity). A non-linear head
  (MobileNetV3's MLP, MaxViT's tanh pre-logits) is the labelled non-linear variant
  (:mod:`.nonlinear`): the whole post-pool head applied at each location.

Refused, naming the operation: a forward that cannot be traced, no global average pool (VGG /
AlexNet pool to a 7x7 / 6x6 grid that the classifier reads flattened), a head that reads the map
besides its average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CSRAError, first_line
from ..heads.location import LocationHead
from .base import close_relative, probe_input, read_affine
from .timm_head import _AFFINE, _PASSTHROUGH, _is_linear

# operations on the pooled vector that only reshape it (flatten, view, dropout in eval)
_RESHAPES_FN = {torch.flatten, torch.reshape, torch.squeeze, F.dropout}
_RESHAPES_METHOD = {"flatten", "view", "reshape", "squeeze", "contiguous"}


class _Tracer(fx.Tracer):
    """Leaf: torch.nn's own modules and any module holding parameters or buffers itself (attention
    with a position bias table, ...), so the split graphs call the model's modules by reference
    (a later ``.to(device)`` moves what they use)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        own = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        return super().is_leaf_module(m, qualname) or (qualname != "" and own)


def _trace(model: nn.Module, name: str) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise CSRAError(
            f"model {name}: its forward cannot be traced to find the pooling ({type(exc).__name__}: {first_line(exc)}), "
            "so its head cannot be read per location"
        ) from None
    return fx.GraphModule(tracer.root, graph)


def _ones(size: Any) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


def _pool_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """How ``node`` pools: "global" (an average over H and W to one value per channel), "grid" (an
    adaptive average pool to a larger grid) or None."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return "global" if _ones(m.output_size) else "grid"
        return None
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return "global" if _ones(size) else "grid"
    is_mean = (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    )
    if is_mean:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        return "global" if set(dims) in ({2, 3}, {-2, -1}) else None
    return None


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"'{node.target}' ({gm.get_submodule(str(node.target))})"
    return f"'{getattr(node.target, '__name__', node.target)}'"


def _subgraph(gm: fx.GraphModule, start: fx.Node | None, nodes: list[fx.Node], out: fx.Node) -> fx.GraphModule:
    """``nodes`` (in order) as a graph: ``start``'s value (or the model input) is its one input."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start is not None:
        env[start] = graph.placeholder("x")
    for n in nodes:
        if n.op == "placeholder" and start is not None:
            continue
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[out])
    sub = fx.GraphModule(gm, graph)
    sub.graph.eliminate_dead_code()
    sub.delete_all_unused_submodules()
    sub.recompile()
    return sub


@dataclass
class GraphPlan:
    """The model split at its global average pool, and its head per location."""

    backbone: fx.GraphModule  # image -> pre-pool map (B, d, H, W)
    tail: fx.GraphModule  # pre-pool map -> logits (the model's own pool and head)
    post: fx.GraphModule  # pooled vector (its own shape) -> logits
    pooled_shape: tuple[int, ...]  # the pooled vector's shape after the batch axis: (d,), (d, 1, 1)
    head: LocationHead | None  # None: non-linear after pooling
    folded: str  # "" when the classifier's own weights are used, else what was folded
    nonlinear_reason: str  # why the head is non-linear ("" when it is affine)


def plan_graph(model: nn.Module, name: str, size: int) -> GraphPlan:
    """Trace ``model`` (in eval mode), split it at its last global average pool and read its head."""
    gm = _trace(model, name)
    nodes = list(gm.graph.nodes)
    pools = [(n, kind) for n in nodes if (kind := _pool_kind(gm, n))]
    if not pools or pools[-1][1] != "global":
        grid = next((n for n, kind in reversed(pools) if kind == "grid"), None)
        if grid is not None:
            raise CSRAError(
                f"model {name}: {_describe(gm, grid)} keeps a grid and the classifier reads it flattened, "
                "not one average over locations, so it has no per-location form"
            )
        raise CSRAError(
            f"model {name}: no global average pooling in its forward, so CSRA's identity (mean of per-location scores = logits) cannot hold"
        )
    pool = pools[-1][0]
    fmap = pool.args[0]
    if not isinstance(fmap, fx.Node):
        raise CSRAError(f"model {name}: its pooling does not take a feature map")
    i = nodes.index(pool)
    after = [n for n in nodes[i + 1 :] if n.op != "output"]
    before = set(nodes[:i])
    for n in after:
        stray = next((a for a in n.all_input_nodes if a in before and a.op != "get_attr"), None)
        if stray is not None:
            raise CSRAError(
                f"model {name}: its head ({_describe(gm, n)}) also takes '{stray.name}', computed before its average pooling, "
                "so it cannot be applied per location"
            )
    output = next(n for n in nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, fx.Node):
        raise CSRAError(f"model {name}: its forward does not return one logits tensor")
    backbone = _subgraph(gm, None, nodes[: nodes.index(fmap) + 1], fmap)
    tail = _subgraph(gm, fmap, [pool, *after], result)
    post = _subgraph(gm, pool, after, result)
    x = probe_input(model, size)
    with torch.no_grad():
        try:
            raw = backbone(x).float()
            pooled = pool_output(gm, pool, raw)
            logits = post(pooled).float()
        except Exception as exc:
            raise CSRAError(
                f"model {name}: its split forward fails on a {size}x{size} input ({type(exc).__name__}: {first_line(exc)})"
            ) from None
    if raw.dim() != 4 or logits.dim() != 2:
        raise CSRAError(
            f"model {name}: the map before its pooling has shape {tuple(raw.shape[1:])} and its logits {tuple(logits.shape[1:])}, "
            "not (channels, H, W) and (classes,)"
        )
    plan = GraphPlan(backbone, tail, post, tuple(pooled.shape[1:]), None, "", "")
    _read_head(gm, plan, pool, after, result, pooled, int(raw.shape[1]))
    return plan


def pool_output(gm: fx.GraphModule, pool: fx.Node, raw: torch.Tensor) -> torch.Tensor:
    """The pool node run on ``raw`` (its own shape: (B, d, 1, 1) or (B, d))."""
    return _subgraph(gm, pool.args[0], [pool], pool)(raw)  # type: ignore[arg-type]


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _is_reshape(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = _module(gm, node)
    if m is not None:
        return isinstance(m, _PASSTHROUGH)
    if node.op == "call_function":
        return node.target in _RESHAPES_FN
    return node.op == "call_method" and node.target in _RESHAPES_METHOD


def _read_head(
    gm: fx.GraphModule,
    plan: GraphPlan,
    pool: fx.Node,
    after: list[fx.Node],
    result: fx.Node,
    pooled: torch.Tensor,
    width: int,
) -> None:
    """Fill ``plan.head`` (pooled LayerNorm ->) affine, or ``plan.nonlinear_reason``."""
    ops = [n for n in after if not _is_reshape(gm, n) and n.op != "get_attr"]
    norm = _module(gm, ops[0]) if ops else None
    norm_node = ops[0] if isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (width,) else None
    rest = ops[1:] if norm_node is not None else ops
    one = _module(gm, rest[0]) if len(rest) == 1 else None
    weight: torch.Tensor
    bias: torch.Tensor | None
    if one is not None and _is_linear(one):
        linear: Any = one
        weight, bias = linear.weight.reshape(linear.weight.shape[0], -1), linear.bias
    else:
        start, sample = pool, pooled
        if norm_node is not None:
            start = norm_node
            with torch.no_grad():
                sample = _subgraph(gm, pool, after[: after.index(norm_node) + 1], norm_node)(pooled)
        part = _subgraph(gm, start, after[after.index(start) + 1 :] if start in after else after, result)
        in_shape = tuple(sample.shape[1:])
        weight, bias = _read_affine(part, in_shape, width, pooled.device)
        scale = float(sample.abs().max()) or 1.0
        probe = torch.randn(2, width, generator=torch.Generator().manual_seed(1)).to(pooled.device) * scale
        with torch.no_grad():
            checks = [(probe, part(probe.reshape(2, *in_shape)).float()), (sample.reshape(2, -1), part(sample).float())]
        if not all(close_relative(v @ weight.T + bias, out) for v, out in checks):
            culprit = next((n for n in rest if not isinstance(_module(gm, n), _AFFINE)), None)
            what = _describe(gm, culprit) if culprit is not None else "a non-linear operation"
            plan.nonlinear_reason = f"its head applies {what} after pooling"
            return
        plan.folded = (
            ", ".join(_describe(gm, n) for n in rest)
            or "the identity: the map before the pool is already the class scores"
        )
    if norm_node is None:
        plan.head = LocationHead(weight.detach(), None if bias is None else bias.detach())
    else:
        ln: Any = norm
        plan.head = LocationHead(
            weight.detach(),
            None if bias is None else bias.detach(),
            getattr(ln, "weight", None),
            getattr(ln, "bias", None),
            ln.eps,
            pooled_norm=True,
        )


def _read_affine(
    part: fx.GraphModule, in_shape: tuple[int, ...], width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map ``part`` computes on ``(N, *in_shape)`` inputs, read off at 0 and the unit vectors."""
    return read_affine(lambda v: part(v.reshape(-1, *in_shape)).float(), width, device)


class PooledHeadFn:
    """The post-pool head on pooled-style vectors ``(N, d)`` (reshaped to the pooled vector's own
    shape): :class:`~csra_posthoc.models.nonlinear.NonlinearLocationHead`'s ``fn``."""

    def __init__(self, post: fx.GraphModule, pooled_shape: tuple[int, ...]) -> None:
        self.post = post
        self.pooled_shape = pooled_shape

    def __call__(self, model: Any, v: torch.Tensor) -> torch.Tensor:
        return self.post(v.reshape(v.shape[0], *self.pooled_shape))
