"""Any timm classifier's head, read from timm's own head contract instead of family rules.

Every timm model computes ``forward_head(forward_features(x))``. This module finds, on one random
input, three things about that head:

1. **the layout** of ``forward_features``' output: an NCHW map, an NHWC map (Swin, MaxViT, ...)
   or tokens on a grid (Mixer, ResMLP, LeViT, ViT, ...), with any prefix (class / distillation /
   register) tokens;
2. **the pooling**: the first vector ``forward_head`` hands to a module is compared with the mean
   over locations of the map in each candidate layout. A match is average pooling (whatever timm
   calls it: ``'avg'``, ``'fast'``, an NHWC pool, ``x.mean(1)``); a model with prefix tokens that
   pools otherwise (class token, ...) gets the patch-average baseline, as the CSRA paper does;
   anything else (max, avg+max, attention pooling) is refused, naming it;
3. **what follows the pooling**: a LayerNorm first (normalised per location with the pooled
   vector's statistics, see :mod:`csra_posthoc.heads.location`), then a function that must be
   affine. When that function is just the model's classifier (``get_classifier()``, a linear layer
   or 1x1 conv, with only Identity / Dropout / Flatten around it) its weights are used as they are;
   otherwise (BatchNorm in eval, stacked linear layers, a distillation head averaged with the
   main one) the affine map is read off by evaluating it at 0 and at the unit vectors, and checked
   on the real pooled vectors and on a random direction. A non-linearity after pooling is refused,
   naming the module (the generalised non-linear variant is the caller's business).

The runtime identity check (:func:`csra_posthoc.models.identity.verify_identity`) then decides.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from ..errors import CSRAError, first_line
from ..heads.location import LocationHead
from .base import close_relative, probe_input, read_affine, tokens_to_grid

Layout = Literal["nchw", "nhwc", "tokens"]

# modules that are the identity on a pooled vector in eval mode
_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten)
# modules that are affine on a pooled vector in eval mode
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, *_PASSTHROUGH)


class HeadNotAffineError(CSRAError):
    """The head is not affine after average pooling, but may still be applied per location by the
    labelled non-linear variant (:mod:`.nonlinear`): a non-linearity after pooling (``stage``
    "after"), or per-location modules between ``forward_features`` and the pool ("before")."""

    def __init__(self, message: str, stage: Literal["before", "after"], layout: Layout | None, prefix: int = 0) -> None:
        super().__init__(message)
        self.stage = stage
        self.layout = layout
        self.prefix = prefix  # prefix tokens of a token layout


class MultiStreamError(CSRAError):
    """``forward_features`` returns several streams (a list of tensors): :mod:`.multistream`'s business."""


class SingleLocationError(CSRAError):
    """``forward_features`` has one location (PiT: its class tokens only): :mod:`.class_tokens` may find the patch tokens."""


@dataclass
class HeadPlan:
    """What :func:`plan_head` found: how to put ``forward_features``' output on a grid, and the head."""

    layout: Layout
    prefix_tokens: int
    head: LocationHead
    patch_average: bool  # the model does not average the patch tokens (class token, ...)
    folded: str  # "" when the classifier's own weights are used, else what was folded into it
    size: int = 0  # the input side the head was read at


@dataclass
class _Call:
    qualname: str
    module: nn.Module
    inputs: tuple
    output: Any


def feature_map(
    raw: torch.Tensor, layout: Layout, prefix_tokens: int, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """``forward_features``' output as a ``(B, d, H, W)`` map in the given layout."""
    if layout == "nchw":
        return raw
    if layout == "nhwc":
        return raw.permute(0, 3, 1, 2)
    return tokens_to_grid(raw[:, prefix_tokens:], grid)


def _pooled_shaped(t: Any, batch: int) -> bool:
    """A ``(B, d)`` vector, possibly with singleton spatial axes (``(B, d, 1, 1)``, ``(B, 1, 1, d)``)."""
    return (
        isinstance(t, torch.Tensor)
        and t.dim() >= 2
        and t.shape[0] == batch
        and sum(int(s) > 1 for s in t.shape[1:]) == 1
    )


@contextlib.contextmanager
def _recording(model: nn.Module) -> Iterator[list[_Call]]:
    """Every leaf module called while the context is open, in call order, with its inputs and output."""
    calls: list[_Call] = []
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        calls.append(_Call(names.get(module, type(module).__name__), module, inputs, output))

    for m in model.modules():
        if not any(True for _ in m.children()):
            handles.append(m.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _describe(call: _Call) -> str:
    return f"'{call.qualname}' ({type(call.module).__name__})"


def _pool_name(model: Any) -> str:
    for owner in (model, getattr(model, "head", None)):
        pool = getattr(owner, "global_pool", None)
        kind = pool if isinstance(pool, str) else getattr(pool, "pool_type", None)
        if kind:
            return f"pooling {kind!r}"
    if getattr(model, "attn_pool", None) is not None:
        return "attention pooling"
    return "its pooling"


def _layouts(raw: torch.Tensor, width: int, prefix: int) -> list[tuple[Layout, int]]:
    """Candidate layouts of ``raw`` whose channel axis has ``width`` entries."""
    out: list[tuple[Layout, int]] = []
    if raw.dim() == 4:
        if raw.shape[1] == width:
            out.append(("nchw", 0))
        if raw.shape[3] == width:
            out.append(("nhwc", 0))
    elif raw.dim() == 3 and raw.shape[2] == width and raw.shape[1] > prefix:
        out.append(("tokens", prefix))
    return out


def _is_layer_norm(module: nn.Module, width: int) -> bool:
    return isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (width,)


def plan_head(
    model: Any,
    name: str,
    size: int,
    nonlinear: Callable[[str], None] | None = None,
    own_size: int | None = None,
) -> HeadPlan:
    """Read ``model``'s head off one random ``size`` x ``size`` input (the model must be in eval mode).

    ``nonlinear(reason)`` is called (then the refusal raised) when a non-linear operation follows
    the pooling. ``own_size``: the model's own input side, used instead when ``size`` leaves a
    single location (one location cannot tell a per-location head from a pooled one)."""
    if not callable(getattr(model, "forward_features", None)) or not callable(getattr(model, "forward_head", None)):
        raise CSRAError(f"model {name}: timm model without forward_features/forward_head is not supported")
    x = probe_input(model, size)
    with torch.no_grad():
        try:
            raw = model.forward_features(x)
        except Exception as exc:  # any failure of the model itself, in one line
            raise CSRAError(
                f"model {name}: forward_features fails on a {size}x{size} input ({type(exc).__name__}: {first_line(exc)})"
            ) from None
        if isinstance(raw, (list, tuple)) and len(raw) > 1 and all(isinstance(t, torch.Tensor) for t in raw):
            raise MultiStreamError(
                f"model {name}: forward_features returns {len(raw)} streams, not one feature map (see models.multistream)"
            )
        if not isinstance(raw, torch.Tensor):
            raise CSRAError(
                f"model {name}: forward_features returns a {type(raw).__name__}, not one feature map, so its locations cannot be scored"
            )
        raw = raw.float()
        if not torch.isfinite(raw).all():
            raise CSRAError(
                f"model {name}: forward_features gives non-finite values on a random {size}x{size} input, so its head cannot be read"
            )
        with _recording(model) as calls:
            logits = model.forward_head(raw)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise CSRAError(f"model {name}: forward_head does not return one (batch, classes) tensor")
    batch = raw.shape[0]
    roots = _roots(calls, batch)
    if not roots:
        raise CSRAError(
            f"model {name}: no pooled vector reaches a module in forward_head (the classifier runs before pooling), so its head cannot be read per location"
        )
    first = calls.index(roots[0])
    entry = roots[0]
    pooled = entry.inputs[0].reshape(batch, -1).float()
    width = pooled.shape[1]
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if (
        raw.dim() == 3 and not prefix
    ):  # a class token the model does not declare (CoaT-Lite): what a square grid leaves over
        extra = raw.shape[1] - math.isqrt(raw.shape[1]) ** 2
        prefix = extra if 0 < extra <= 8 else 0
    # a second head on the same pooled vector (LeViT's distillation head), or on another prefix
    # token (distilled DeiT); a module fed by a functional op after pooling is not a root
    roots = [
        r
        for r in roots
        if r is entry
        or torch.equal(r.inputs[0], entry.inputs[0])
        or (prefix > 1 and r.inputs[0].shape == entry.inputs[0].shape)
    ]
    late = next(
        (
            c
            for c in calls[first:]
            if c.inputs
            and isinstance(c.inputs[0], torch.Tensor)
            and c.inputs[0].dim() >= 3
            and not _pooled_shaped(c.inputs[0], batch)
        ),
        None,
    )
    if late is not None:  # attention pooling: a latent query is a vector, but the keys still read the whole map
        raise CSRAError(
            f"model {name}: {_pool_name(model)} is not an average over locations ({_describe(late)} reads the whole map after it), so CSRA's identity cannot hold"
        )
    for call in calls[:first]:  # modules between forward_features and the pooled vector: pooling only
        if (
            not isinstance(call.module, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.AvgPool2d, *_PASSTHROUGH))
            and "Pool" not in type(call.module).__name__
        ):
            raise HeadNotAffineError(
                f"model {name}: forward_head applies {_describe(call)} before pooling, so forward_features' output is not the map its classifier averages",
                "before",
                None,
            )
    layout: tuple[Layout, int] | None = None
    if all(
        r.inputs[0].reshape(batch, -1).shape == pooled.shape
        and torch.equal(r.inputs[0].reshape(batch, -1).float(), pooled)
        for r in roots
    ):
        for lay, pre in _layouts(raw, width, prefix):
            if close_relative(
                feature_map(raw, lay, pre).flatten(2).mean(-1) if lay != "tokens" else raw[:, pre:].mean(1), pooled
            ):
                layout = (lay, pre)
                break
    patch_average = False
    if layout is None:
        candidates = _layouts(raw, width, prefix)
        if prefix > 0 and candidates and candidates[0][0] == "tokens":
            layout, patch_average = candidates[0], True  # class-token model: the paper's patch average
        elif candidates:
            raise CSRAError(
                f"model {name}: {_pool_name(model)} is not an average over locations, so CSRA's identity (mean of per-location scores = logits) cannot hold"
            )
        else:
            raise CSRAError(
                f"model {name}: forward_features' output of shape {tuple(raw.shape[1:])} cannot be put on a grid of {width}-wide locations (the pooled vector's width)"
            )
    try:
        locations = feature_map(raw, *layout).flatten(2).shape[-1]
    except ValueError as exc:
        raise CSRAError(
            f"model {name}: forward_features' output {tuple(raw.shape[1:])} cannot be put on a grid ({exc})"
        ) from None
    if locations < 2 and own_size is not None and own_size != size:
        return plan_head(model, name, own_size, nonlinear)
    if locations < 2:
        raise SingleLocationError(
            f"model {name}: forward_features returns {tuple(raw.shape[1:])}, a single location (its patch tokens are not in it), so there is nothing to attend over"
        )
    post = calls[first:]
    norm: Any = entry.module if len(roots) == 1 and _is_layer_norm(entry.module, width) else None
    after = post[1:] if norm is not None else post
    classifier: Any = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    fast = [c for c in after if not isinstance(c.module, _PASSTHROUGH)]
    weight: torch.Tensor
    bias: torch.Tensor | None
    if len(roots) == 1 and len(fast) == 1 and fast[0].module is classifier and _is_linear(classifier):
        linear: Any = classifier
        weight, bias = linear.weight.reshape(linear.weight.shape[0], -1), linear.bias
        folded = ""
    else:
        weight, at_zero = _read_affine(model, raw, roots, norm is not None, width)
        bias = at_zero
        folded = ", ".join(f"{type(c.module).__name__}" for c in after if not isinstance(c.module, _PASSTHROUGH))
        reason = _nonlinear_reason(
            after,
            model,
            raw,
            roots,
            norm is not None,
            weight,
            at_zero := bias,
            pooled,
            None if patch_average else logits,
            width,
        )
        if reason:
            if nonlinear is not None:
                nonlinear(reason)
            raise HeadNotAffineError(
                f"model {name}: {reason}, so it cannot be applied per location (the mean of per-location scores would not be its logits)",
                "after",
                None if patch_average else layout[0],
                layout[1],
            )
    if norm is None:
        head = LocationHead(weight.detach(), None if bias is None else bias.detach())
    else:
        head = LocationHead(
            weight.detach(),
            None if bias is None else bias.detach(),
            getattr(norm, "weight", None),
            getattr(norm, "bias", None),
            norm.eps,
            pooled_norm=True,
        )
    return HeadPlan(layout[0], layout[1], head, patch_average, folded, size)


def _is_linear(module: Any) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _roots(calls: list[_Call], batch: int) -> list[_Call]:
    """The modules that take a pooled vector first (not one a module after pooling computed): the
    classifier's input, or the pooled norm's; several for a distilled model's two heads."""
    roots: list[_Call] = []
    produced: set[int] = set()
    for c in calls:
        if not c.inputs or not _pooled_shaped(c.inputs[0], batch):
            continue
        if not isinstance(c.module, _PASSTHROUGH) and c.inputs[0].data_ptr() not in produced:
            roots.append(c)
        if roots and isinstance(c.output, torch.Tensor):
            produced.add(c.output.data_ptr())
    return roots


def _with_entry(
    model: Any, raw: torch.Tensor, roots: list[_Call], after_norm: bool, vectors: torch.Tensor
) -> torch.Tensor:
    """``forward_head`` with the pooled vector(s) (or the pooled norm's output) replaced by ``vectors``."""
    n = vectors.shape[0]
    handles = []
    for root in roots:
        shape = (root.output if after_norm else root.inputs[0]).shape[1:]
        values = vectors.reshape(n, *shape).to(raw.dtype)
        if after_norm:

            def replace(module: nn.Module, inputs: tuple, output: Any, values: torch.Tensor = values) -> Any:
                return values

            handles.append(root.module.register_forward_hook(replace))
        else:

            def replace_in(module: nn.Module, inputs: tuple, values: torch.Tensor = values) -> Any:
                return (values, *inputs[1:])

            handles.append(root.module.register_forward_pre_hook(replace_in))
    try:
        with torch.no_grad():
            return model.forward_head(raw[:1].expand(n, *raw.shape[1:])).float()
    finally:
        for h in handles:
            h.remove()


def _read_affine(
    model: Any, raw: torch.Tensor, entry: list[_Call], after_norm: bool, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map after pooling (or after the pooled norm), read off at 0 and the unit vectors."""
    return read_affine(lambda v: _with_entry(model, raw, entry, after_norm, v), width, raw.device)


def _nonlinear_reason(
    after: list[_Call],
    model: Any,
    raw: torch.Tensor,
    entry: list[_Call],
    after_norm: bool,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pooled: torch.Tensor,
    logits: torch.Tensor | None,
    width: int,
) -> str:
    """Why the head after pooling is not affine ("" when it is): checked on the real pooled vectors
    (through the model's own logits) and on a random direction at the same scale."""
    culprit = next((c for c in after if not isinstance(c.module, _AFFINE)), None)
    if after_norm:
        normed = entry[0].output.reshape(pooled.shape[0], -1).float()
    else:
        normed = pooled
    scale = float(normed.abs().max()) or 1.0
    probe = torch.randn(2, width, generator=torch.Generator().manual_seed(1)).to(raw.device) * scale
    checks = [(probe, _with_entry(model, raw, entry, after_norm, probe))]
    if (
        logits is not None
    ):  # the model's own logits come from the pooled vector (not so for a class token + distillation token)
        checks.append((normed, logits.float()))
    affine = all(close_relative(v @ weight.T + bias, out) for v, out in checks)
    if affine:
        return ""
    if culprit is not None:
        return f"its head has {_describe(culprit)}, non-linear after pooling"
    return "its forward_head applies a non-linear operation after pooling"
