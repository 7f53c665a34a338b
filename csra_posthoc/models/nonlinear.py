"""Non-linear heads: CSRA's generalised, clearly labelled variant (docs/method.md §5).

Some heads have a non-linearity after pooling (timm MobileNetV3 / GhostNet ``conv_head`` + activation,
HGNetV2's ``last_conv``, ``NormMlpClassifierHead`` with a ``tanh`` / GELU pre-logits layer as in
MaxViT / CoAtNet / ConvNeXt ``head_hidden_size``, MetaFormer's ``MlpHead``, torchvision
``mobilenet_v3_*``). For them the mean of per-location scores is not the logits, so the variant is

    score(c) = logits(c) + lam * attended_k(head(x_k))(c)

baseline = the model's own logits (exact: lam = 0 *is* the model), attended term = the max / softmax
average over locations of the *whole* post-pool head applied at each location ``x_k``. The head is
the model's own code (timm ``forward_head`` on a ``(N, d, 1, 1)`` map, torchvision's ``classifier``
on ``(N, d)`` vectors), run on the ``B * K`` locations in chunks to bound its memory. The runtime
self-check: the same per-location head applied to the pooled vector reproduces the logits,
``head(mean_k x_k) == logits`` to :data:`NONLINEAR_TOLERANCE` of the logits' scale; a head that
does not start with average pooling (torchvision VGG's 7x7 grid, a max pool) fails it and is
refused in one line.

timm VGG: its ``pre_logits`` is a 7x7-kernel conv MLP *before* the pool, so each location is a
7x7 window of the last conv map: the feature map is ``pre_logits``' output and the head is the
pool -> linear classifier (one location at the native 224 input; a larger ``img_size`` gives more).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn

from ..errors import CSRAError
from .base import AdapterInfo, DataConfig, ModelAdapter, eval_mode, identity_scale, probe_input, tokens_to_grid
from .timm_head import _pooled_shaped, _recording

NONLINEAR_TOLERANCE = 1e-4  # relative: |head(mean_k x_k) - logits| <= tolerance * identity_scale(logits)
CHUNK_FLOATS = 1 << 24  # widest head activation over one chunk of locations: 64 MiB of fp32

HeadFn = Callable[[Any, torch.Tensor], torch.Tensor]  # (model, (N, d) vectors) -> (N, C) scores


def _exporting() -> bool:
    """Tracing / exporting: one call over every location (the chunk count would depend on the batch)."""
    return bool(
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


class NonlinearLocationHead(nn.Module):
    """The model's whole post-pool head applied at every location: ``(B, d, H, W) -> (B, C, H*W)``.

    ``parts`` are the model's own head modules (shared, by reference: its state dict is what
    ``head_fingerprint`` hashes); ``fn(model, v)`` runs them on pooled-style vectors ``v (N, d)``.
    """

    nonlinear = True
    pooled_norm = False  # no probe / pooled-norm machinery: the head is the model's, as it is

    def __init__(
        self, model: nn.Module, parts: dict[str, nn.Module], fn: HeadFn, num_classes: int, dim: int, what: str
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a submodule: the parts below are its modules
        self.parts = nn.ModuleDict(parts)
        self.fn = fn
        self._num_classes = int(num_classes)
        self.dim = int(dim)
        self.what = what
        widths = [int(p.shape[0]) for p in self.parts.parameters() if p.ndim >= 2]
        self.width = max([self._num_classes, self.dim, *widths])

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def apply_head(self, v: torch.Tensor) -> torch.Tensor:
        """The head on vectors ``(N, d)`` -> ``(N, C)``, in eval mode (no dropout), fp32."""
        model: Any = self._model
        with eval_mode(model):
            return self.fn(model, v.float()).float()

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        """The head on the average-pooled vector ``(B, C)``: the runtime self-check's side (== logits)."""
        return self.apply_head(fmap.float().flatten(2).mean(dim=-1))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        x = fmap.float().flatten(2)  # (B, d, K)
        k = int(x.shape[-1])
        v = x.transpose(1, 2).reshape(-1, x.shape[1])  # (B * K, d): image-major, location-minor
        if _exporting():
            out = self.apply_head(v)
        else:
            chunk = max(1, CHUNK_FLOATS // self.width)
            out = torch.cat([self.apply_head(c) for c in v.split(chunk)]) if v.shape[0] > chunk else self.apply_head(v)
        return out.unflatten(0, (-1, k)).transpose(1, 2)  # (B, C, K)

    def pooled_features(self, fmap: torch.Tensor) -> torch.Tensor:
        raise CSRAError(
            "head probe: a linear probe needs a model whose head is linear after pooling; this model's head is non-linear",
            param="head",
        )

    def extra_repr(self) -> str:
        return f"{self.what}, dim={self.dim}, classes={self._num_classes}"


class TimmNonlinearAdapter(ModelAdapter):
    """timm model with a non-linear head: ``forward_features`` (+ VGG's ``pre_logits``), ``forward_head``."""

    window = False  # VGG: the feature map is pre_logits' output (each location a 7x7 window)
    nhwc = False

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_features(x)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        if self.window:
            with eval_mode(self.model):
                return self.wrapped.pre_logits(raw)
        return raw.permute(0, 3, 1, 2) if self.nhwc else raw

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_head(raw)


class TimmVGGAdapter(TimmNonlinearAdapter):
    window = True


class TimmNonlinearTokensAdapter(TimmNonlinearAdapter):
    """Average-pooled tokens (after any prefix tokens) with a non-linear head: the patch tokens on their grid."""

    prefix = 0

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
        return tokens_to_grid(raw[:, self.prefix :], tuple(grid) if grid else None)


class TokensHead:
    """``forward_head`` on ``prefix + 1`` copies of each vector: an average over the patch tokens reads it back."""

    def __init__(self, prefix: int) -> None:
        self.prefix = prefix

    def __call__(self, model: Any, v: torch.Tensor) -> torch.Tensor:
        return model.forward_head(v[:, None, :].expand(-1, self.prefix + 1, -1).contiguous())


class ChainHead:
    """The leaf modules after the pool, run in turn on the vectors shaped as the pool's output."""

    def __init__(self, names: tuple[str, ...], pooled_shape: tuple[int, ...]) -> None:
        self.names = names
        self.pooled_shape = pooled_shape

    def __call__(self, model: Any, v: torch.Tensor) -> torch.Tensor:
        return _run_chain(model, self.names, v.reshape(v.shape[0], *self.pooled_shape))


class _Captured(Exception):
    """Raised by a hook to stop ``forward_head`` once the pool's input is in hand."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


class TimmPrePoolAdapter(TimmNonlinearAdapter):
    """A head with modules before its pool (CPUBone / LowFormer / EfficientViT's ``in_conv``): the
    feature map is what the pool averages (those modules' output), the head is what follows the pool."""

    pre_chain: tuple[str, ...] | None = None  # the leaf modules before the pool, when running them in turn is the head

    def __init__(self, model: nn.Module, head: Any, info: AdapterInfo, data_config: DataConfig, pool: str) -> None:
        super().__init__(model, head, info, data_config)
        self.pool = pool

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        if self.pre_chain is not None:  # no hooks: torch.export / ONNX trace this
            with eval_mode(self.model):
                return _run_chain(self.model, self.pre_chain, raw)

        def capture(module: nn.Module, inputs: tuple) -> None:
            raise _Captured(inputs[0])

        handle = self.model.get_submodule(self.pool).register_forward_pre_hook(capture)
        try:
            with eval_mode(self.model):
                self.wrapped.forward_head(raw)
        except _Captured as got:
            return got.value
        finally:
            handle.remove()
        raise CSRAError(f"model {self.info.name}: forward_head did not reach its pool '{self.pool}'")


class PoolReplacedHead:
    """``forward_head`` from the pool on: the pool's output replaced by the vectors ``v``, its input a
    ``(N, channels, 1, 1)`` zero map (the modules before the pool run on it, cheaply, and are discarded)."""

    def __init__(self, pool: str, channels: int) -> None:
        self.pool = pool
        self.channels = channels

    def __call__(self, model: Any, v: torch.Tensor) -> torch.Tensor:
        def replace(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return v.reshape(v.shape[0], *output.shape[1:]).to(output.dtype)

        handle = model.get_submodule(self.pool).register_forward_hook(replace)
        try:
            return model.forward_head(v.new_zeros(v.shape[0], self.channels, 1, 1))
        finally:
            handle.remove()


class TimmNonlinearNHWCAdapter(TimmNonlinearAdapter):
    nhwc = True


class TorchvisionNonlinearAdapter(ModelAdapter):
    """torchvision ``features`` -> average pool -> ``classifier`` (an MLP: MobileNetV3)."""

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped.features(x)

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.classifier(torch.flatten(self.wrapped.avgpool(raw), 1))


def _timm_head_fn(model: Any, v: torch.Tensor) -> torch.Tensor:
    return model.forward_head(v[:, :, None, None])


def _timm_head_fn_nhwc(model: Any, v: torch.Tensor) -> torch.Tensor:
    return model.forward_head(v[:, None, None, :])


def _timm_vgg_head_fn(model: Any, v: torch.Tensor) -> torch.Tensor:
    return model.head(v[:, :, None, None])


def _torchvision_head_fn(model: Any, v: torch.Tensor) -> torch.Tensor:
    return model.classifier(v)


def _used_children(model: nn.Module, run: Callable[[], Any]) -> dict[str, nn.Module]:
    """The model's direct children whose modules ``run`` calls: the head's modules (a head may call
    its children's children itself, as MetaFormer's ``forward_head`` does)."""
    used: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_, n=name.split(".")[0]: used.append(n))
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    children = dict(model.named_children())
    return {n: children[n] for n in dict.fromkeys(used)}


def timm_head_is_nonlinear(model: nn.Module) -> bool:
    """A timm head with a layer between pooling and the classifier (or VGG's conv MLP before the pool)."""
    from timm.layers import NormMlpClassifierHead
    from timm.models.vgg import VGG

    if isinstance(model, VGG):
        return True
    head = getattr(model, "head", None)
    if isinstance(head, NormMlpClassifierHead) and getattr(head, "hidden_size", None):
        return True
    fc = getattr(head, "fc", None)
    if type(fc).__name__ == "MlpHead":  # MetaFormer's head_fn
        return True
    width, hidden = getattr(model, "num_features", None), getattr(model, "head_hidden_size", None)
    return bool(width and hidden and width != hidden)


def _nhwc(model: nn.Module) -> bool:
    head = getattr(model, "head", None)
    pool = getattr(model, "global_pool", None) or getattr(head, "global_pool", None)
    return getattr(pool, "input_fmt", "NCHW") == "NHWC" or getattr(model, "output_fmt", "NCHW") == "NHWC"


def nonlinear_adapter(model: nn.Module, name: str, weights: str, data_config: DataConfig) -> ModelAdapter:
    """Wrap a timm or torchvision model whose head is non-linear after pooling (see the module doc).

    The self-check (:func:`check_pooled_head`) runs where every adapter's identity check runs
    (:func:`~csra_posthoc.models.identity.verify_identity`), on each build."""
    return _build(model, name, weights, data_config)


def _build(model: nn.Module, name: str, weights: str, data_config: DataConfig) -> ModelAdapter:
    module = type(model).__module__
    if module.startswith("torchvision.models"):
        return _torchvision(model, name, weights, data_config)
    if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        raise CSRAError(f"model {name}: timm model without forward_features/forward_head is not supported")
    from timm.models.vgg import VGG

    timm_model: Any = model  # timm's attributes vary by architecture
    num_classes = _num_classes(model, name)
    prepool = _prepool(model, data_config.input_size)
    if prepool is not None:
        pool, dim, channels, before, chain = prepool
        fn_pool: Any = PoolReplacedHead(pool, channels) if chain is None else ChainHead(chain[1], chain[2])
        used = _used_children(model, lambda: fn_pool(timm_model, torch.zeros(1, dim)))
        what = f"'{pool}' -> the rest of forward_head ({' -> '.join(used)}), on the map '{pool}' averages"
        head = NonlinearLocationHead(model, used, cast(Any, fn_pool), num_classes, dim, what)
        note = f"head with modules before its pool ({before}): each location is a location of the map the pool averages"
        info = _info(name, "timm-nonlinear", weights, what, note)
        adapter = TimmPrePoolAdapter(model, cast(Any, head), info, data_config, pool)
        adapter.pre_chain = None if chain is None else chain[0]
        return adapter
    if isinstance(model, VGG):
        dim = int(timm_model.head_hidden_size)
        parts: dict[str, nn.Module] = {"head": timm_model.head}
        fn: HeadFn = _timm_vgg_head_fn
        what = "pre_logits (7x7 conv MLP) windows -> pool -> linear"
        cls: type[TimmNonlinearAdapter] = TimmVGGAdapter
        note = "VGG: each location is a 7x7 window of the last conv map (its pre_logits conv MLP); one location at 7x7 maps (224 input), use a larger img_size"
    else:
        nhwc = _nhwc(model)
        dim = int(timm_model.num_features)
        fn = _timm_head_fn_nhwc if nhwc else _timm_head_fn
        probe = torch.zeros(1, 1, 1, dim) if nhwc else torch.zeros(1, dim, 1, 1)
        with torch.no_grad():
            training = model.training
            model.eval()
            try:
                parts = _used_children(model, lambda: timm_model.forward_head(probe))
            except Exception as exc:
                raise CSRAError(
                    f"model {name}: its head cannot be applied to one location ({type(exc).__name__}); a non-linear head must start with pooling"
                ) from None
            finally:
                model.train(training)
        what = "the whole post-pool head (" + " -> ".join(parts) + ")"
        cls = TimmNonlinearNHWCAdapter if nhwc else TimmNonlinearAdapter
        note = ""
    head = NonlinearLocationHead(model, parts, fn, num_classes, dim, what)
    info = _info(name, "timm-nonlinear", weights, what, note)
    return cls(model, cast(Any, head), info, data_config)  # ModelAdapter's head: a LocationHead or this


def _num_classes(model: nn.Module, name: str) -> int:
    """The classifier's width; a model built with num_classes=0 has no head to apply per location."""
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes <= 0:
        raise CSRAError(
            f"model {name}: it has no classifier (num_classes=0), so there is no head to apply per location"
        )
    return num_classes


def nonlinear_tokens_adapter(
    model: nn.Module, name: str, weights: str, data_config: DataConfig, prefix: int
) -> ModelAdapter:
    """Average-pooled tokens whose head is non-linear after pooling (a ViT's RmsNorm ``fc_norm``):
    the whole ``forward_head`` per patch token; :func:`check_pooled_head` decides."""
    timm_model: Any = model
    num_classes = _num_classes(model, name)
    dim = int(timm_model.num_features)
    fn = TokensHead(prefix)
    try:
        parts = _used_children(model, lambda: fn(timm_model, torch.zeros(1, dim)))
    except Exception as exc:
        raise CSRAError(
            f"model {name}: its head cannot be applied to one token ({type(exc).__name__}); a non-linear head must start with pooling"
        ) from None
    what = "the whole post-pool head (" + " -> ".join(parts) + ")"
    head = NonlinearLocationHead(model, parts, cast(Any, fn), num_classes, dim, what)
    adapter = TimmNonlinearTokensAdapter(
        model, cast(Any, head), _info(name, "timm-nonlinear", weights, what, ""), data_config
    )
    adapter.prefix = prefix
    return adapter


def _prepool(model: nn.Module, size: int) -> tuple[str, int, int, str, Any] | None:
    """The average pool ``forward_head`` applies after modules of its own, on one random input:
    (its name, the width it averages, forward_features' channels, the modules before it, and the
    leaf modules before / after it with the pool's output shape where running them in sequence is
    ``forward_head``, else None); None when forward_head starts with its pool (or its input is not
    an NCHW map)."""
    timm_model: Any = model
    x = probe_input(model, size)
    with torch.no_grad(), eval_mode(model):
        try:
            raw = timm_model.forward_features(x)
        except Exception:
            return None  # the identity check reports the model's own failure
        if not isinstance(raw, torch.Tensor) or raw.dim() != 4:
            return None
        with _recording(model) as calls:
            timm_model.forward_head(raw)
    for i, call in enumerate(calls):
        t, out = call.inputs[0] if call.inputs else None, call.output
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or min(t.shape[-2:]) < 1 or t.shape[-2:].numel() < 2:
            continue
        if not _pooled_shaped(out, 2) or out[0].numel() != t.shape[1]:
            continue  # not a vector per image (a 1x1 conv keeps the map)
        if i == 0 or not torch.allclose(out.reshape(2, -1).float(), t.float().mean((2, 3)), rtol=1e-4, atol=1e-5):
            # starts with its pool, or pools otherwise (max): check_pooled_head refuses the latter
            return None
        before = ", ".join(f"'{c.qualname}' ({type(c.module).__name__})" for c in calls[:i])
        pre, post = [c.qualname for c in calls[:i]], [c.qualname for c in calls[i + 1 :]]
        with torch.no_grad(), eval_mode(model):
            plain = _sequential_matches(model, pre, raw, t) and _sequential_matches(model, post, out, calls[-1].output)
        chain = (tuple(pre), tuple(post), tuple(int(v) for v in out.shape[1:])) if plain else None
        return call.qualname, int(t.shape[1]), int(raw.shape[1]), before, chain
    return None


def _run_chain(model: Any, names: tuple[str, ...] | list[str], x: torch.Tensor) -> torch.Tensor:
    for n in names:
        x = model.get_submodule(n)(x)
    return x


def _sequential_matches(model: Any, names: list[str], x: torch.Tensor, expected: Any) -> bool:
    """Running the recorded leaf modules one after the other gives what ``forward_head`` gave (no
    functional op or branch in between that matters): the hook-free form, which torch.export traces."""
    try:
        got = _run_chain(model, names, x)
    except Exception:
        return False
    return (
        isinstance(expected, torch.Tensor)
        and got.shape == expected.shape
        and bool(torch.allclose(got.float(), expected.float(), rtol=1e-5, atol=1e-6))
    )


def _torchvision(model: nn.Module, name: str, weights: str, data_config: DataConfig) -> ModelAdapter:
    import torchvision.models as tvm

    if isinstance(model, tvm.VGG):
        raise CSRAError(
            f"model {name}: torchvision VGG's classifier reads the whole 7x7 grid (average-pooled to 7x7, flattened), not a pooled vector, "
            "so it has no per-location form; timm's vgg* (a 7x7 conv MLP, then a pool) is supported"
        )
    if not isinstance(model, tvm.MobileNetV3):
        raise CSRAError(f"model {name}: torchvision {type(model).__name__} is not supported")
    classifier = model.classifier
    last = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    first = last[0]
    head = NonlinearLocationHead(
        model,
        {"classifier": classifier},
        _torchvision_head_fn,
        last[-1].out_features,
        first.in_features,
        "pool -> classifier MLP",
    )
    info = _info(name, "torchvision-nonlinear", weights, "pool -> classifier MLP", "")
    return TorchvisionNonlinearAdapter(model, cast(Any, head), info, data_config)


def _info(name: str, family: str, weights: str, what: str, note: str) -> AdapterInfo:
    info = AdapterInfo(
        name=name, family=family, baseline_source="model_logits", weights=weights, location_head="nonlinear"
    )
    info.head = f"the model's own non-linear head ({what}), applied per location"
    info.notes.append(
        "non-linear head: baseline = the model's own logits; attended term = the whole head applied at each location (docs/method.md §5)"
    )
    if note:
        info.notes.append(note)
    return info


@torch.no_grad()
def pooled_head_difference(adapter: ModelAdapter, raw: torch.Tensor) -> tuple[float, float]:
    """max |head(mean_k x_k) - logits| and the logits' max |value| on the backbone output ``raw``."""
    with torch.autocast(device_type=raw.device.type, enabled=False):
        raw = raw.float()
        logits = adapter.model_logits(raw).float()
        pooled = adapter.head.pooled(adapter.feature_map(raw))  # type: ignore[operator]
    return float((pooled - logits).abs().max()), float(logits.abs().max())


@torch.no_grad()
def check_pooled_head(adapter: ModelAdapter, tolerance: float = NONLINEAR_TOLERANCE) -> float:
    """One random image: the per-location head on the pooled vector must reproduce the logits."""
    x = probe_input(adapter, adapter.data_config.input_size, batch=1)
    with eval_mode(adapter.model):
        try:
            raw = adapter.forward_backbone(x)
            diff, top = pooled_head_difference(adapter, raw)
        except CSRAError:
            raise
        except Exception as exc:
            raise CSRAError(
                f"model {adapter.info.name}: its non-linear head cannot be applied per location ({type(exc).__name__})"
            ) from None
    scale = identity_scale(top)
    if not diff <= tolerance * scale:
        raise CSRAError(
            f"model {adapter.info.name}: its head applied to the average-pooled features differs from its logits by {diff:.3g} "
            f"({diff / scale:.2g} of the logits' scale, > {tolerance:g}): the head does not start with average pooling, so it has no per-location form"
        )
    return diff
