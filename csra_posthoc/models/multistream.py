"""timm models whose ``forward_features`` returns several streams (a list): CrossViT's two branches,
CoaT's three parallel scales, EfficientViM's per-stage hidden states.

Their ``forward_head`` pools each stream (an average over its locations, or its class token) and
combines the pooled vectors; where that combination is affine, the logits are
``sum_i W_i p_i + b`` with ``p_i`` stream i's pooled vector. The maps ``W_i`` and ``b`` are read
off ``forward_head`` itself (at 0 and at the unit vectors, every location of one stream set to the
vector, the others to 0), so no family rule is involved, and checked on a random direction.

A stream's locations need not be image positions: EfficientViM's are each stage's SSM hidden
state (``state_dim`` tokens, whatever the input size) plus the last stage's map, and its head
averages exactly those, so they are what CSRA attends over there.

Locations: the **union** of every stream's locations, laid out as one ``(B, sum_i d_i, 1, K)``
strip, ``K = sum_i K_i``: location ``k`` of stream ``i`` carries ``(K / K_i) x_ik`` in stream i's
channel block and zeros elsewhere, so one linear head ``[W_1 | W_2 | ...]`` scores it as
``(K / K_i) W_i x_ik + b``. Each location is weighted by the share of the image it covers (a
coarse stream's location covers more), and the mean over the union is exactly
``sum_i W_i mean_k x_ik + b``: the logits for average pooling, the documented patch-average
baseline for class-token streams (class tokens replaced by their stream's patch mean).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from ..errors import CSRAError, first_line
from ..heads.location import LocationHead
from .base import AdapterInfo, DataConfig, ModelAdapter, close_relative, eval_mode, probe_input, read_affine


@dataclass(frozen=True)
class Stream:
    """One stream of ``forward_features``: ``tokens`` ``(B, L, d)`` with ``prefix`` leading tokens,
    or ``channels`` ``(B, d, ...)`` (a map or flattened locations)."""

    shape: tuple[int, ...]  # without the batch axis
    layout: Literal["tokens", "channels"]
    prefix: int
    pooling: Literal["avg", "token"]  # token: the head reads the prefix token(s) only

    @property
    def width(self) -> int:
        return self.shape[-1] if self.layout == "tokens" else self.shape[0]

    @property
    def locations(self) -> int:
        if self.layout == "tokens":
            return self.shape[0] - self.prefix
        return int(torch.Size(self.shape[1:]).numel())

    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def location_features(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, d, K_i)``: the stream's locations (prefix tokens left out)."""
        if self.layout == "tokens":
            return t[:, self.prefix :].transpose(1, 2)
        return t.flatten(2)

    def constant(self, v: torch.Tensor) -> torch.Tensor:
        """A stream whose every location (and prefix token) is ``v`` ``(n, d)``."""
        n = v.shape[0]
        if self.layout == "tokens":
            return v[:, None, :].expand(n, *self.shape).contiguous()
        return v.reshape(n, -1, *([1] * (len(self.shape) - 1))).expand(n, *self.shape).contiguous()


class MultiStreamAdapter(ModelAdapter):
    """``forward_features``' streams packed into one ``(B, sum numel)`` tensor (what the extraction
    and AMP code pass around), unpacked for ``forward_head`` and for the union of locations."""

    def __init__(
        self, model: nn.Module, head: LocationHead, info: AdapterInfo, data_config: DataConfig, streams: list[Stream]
    ) -> None:
        super().__init__(model, head, info, data_config)
        self.streams = streams

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return pack(self.wrapped.forward_features(x))

    def unpack(self, raw: torch.Tensor) -> list[torch.Tensor]:
        sizes = [s.numel() for s in self.streams]
        return [
            part.reshape(raw.shape[0], *s.shape) for part, s in zip(raw.split(sizes, dim=1), self.streams, strict=True)
        ]

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        return union_map(self.unpack(raw), self.streams)

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.wrapped.forward_head(self.unpack(raw))

    @torch.no_grad()
    def patch_average_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The patch-average baseline the model's own way: each stream's prefix tokens replaced by
        the mean of its patch tokens, then ``forward_head`` (the coverage check's reference)."""
        streams = [t.clone() for t in self.wrapped.forward_features(x)]
        for t, s in zip(streams, self.streams, strict=True):
            if s.layout == "tokens" and s.prefix:
                t[:, : s.prefix] = t[:, s.prefix :].mean(1, keepdim=True)
        return self.wrapped.forward_head(streams)


def pack(streams: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(t.shape[0], -1) for t in streams], dim=1)


def union_map(streams: Sequence[torch.Tensor], layout: Sequence[Stream]) -> torch.Tensor:
    """``(B, sum d_i, 1, K)``: every stream's locations, each in its own channel block, scaled by K / K_i."""
    total = sum(s.locations for s in layout)
    width = sum(s.width for s in layout)
    blocks = []
    before = 0
    for t, s in zip(streams, layout, strict=True):
        feats = s.location_features(t.float()) * (total / s.locations)  # (B, d_i, K_i)
        b = feats.shape[0]
        pad_top = feats.new_zeros(b, before, s.locations)
        pad_bottom = feats.new_zeros(b, width - before - s.width, s.locations)
        blocks.append(torch.cat([pad_top, feats, pad_bottom], dim=1))
        before += s.width
    return torch.cat(blocks, dim=2)[:, :, None, :]


def _head(model: Any, streams: list[torch.Tensor]) -> torch.Tensor:
    return model.forward_head(streams).float()


def _stream_layout(model: Any, raw: list[torch.Tensor], i: int) -> Stream | None:
    """How the head reads stream ``i``, found by what leaves the logits unchanged: averaging its
    locations away (tokens with 0 or 1 prefix token, or channels-first), then the prefix token's role."""
    # a random stream i (the real one can hide the layout: a hidden state whose every channel has the same mean)
    t = torch.randn(raw[i].shape, generator=torch.Generator().manual_seed(2)).to(raw[i]) * float(raw[i].abs().max())
    logits = _head(model, [t if j == i else r for j, r in enumerate(raw)])
    shape = tuple(int(s) for s in t.shape[1:])

    def with_stream(new: torch.Tensor) -> torch.Tensor:
        return _head(model, [new if j == i else r for j, r in enumerate(raw)])

    # "unchanged" relative to what the stream contributes (random-init logits are tiny: an absolute
    # tolerance would let any change through)
    effect = float((with_stream(torch.zeros_like(t)) - logits).abs().max())

    def same_with(new: torch.Tensor) -> bool:
        return float((with_stream(new) - logits).abs().max()) <= 1e-3 * effect

    if t.dim() == 3:
        for prefix in (0, 1):
            if t.shape[1] - prefix < 2:
                continue
            z = t.clone()
            z[:, prefix:] = t[:, prefix:].mean(1, keepdim=True)
            if same_with(z):
                pooling: Literal["avg", "token"] = "avg"
                if prefix:
                    z = t.clone()
                    z[:, :prefix] = torch.randn_like(z[:, :prefix]) * float(t.abs().max())
                    pooling = "avg" if same_with(z) else "token"
                return Stream(shape, "tokens", prefix, pooling)
    if t.dim() >= 3:
        flat = t.flatten(2)
        if same_with(flat.mean(-1, keepdim=True).expand_as(flat).reshape(t.shape)):
            return Stream(shape, "channels", 0, "avg")
    return None


def build_multistream_adapter(
    model: nn.Module, name: str, weights: str, data_config: DataConfig, size: int
) -> MultiStreamAdapter:
    """Read the streams' layouts and the affine map after pooling; refuse (one line) what is not affine."""
    timm_model: Any = model
    x = probe_input(model, size)
    with torch.no_grad(), eval_mode(model):
        try:
            raw = [t.float() for t in timm_model.forward_features(x)]
            _head(model, raw)  # the head runs on the real streams
        except Exception as exc:
            raise CSRAError(
                f"model {name}: its streams cannot be read on a {size}x{size} input ({type(exc).__name__}: {first_line(exc)})"
            ) from None
        if not all(isinstance(t, torch.Tensor) for t in raw):
            raise CSRAError(f"model {name}: forward_features returns a list that is not of tensors")
        streams = []
        for i in range(len(raw)):
            s = _stream_layout(model, raw, i)
            if s is None:
                raise CSRAError(
                    f"model {name}: forward_head does not average stream {i} {tuple(raw[i].shape[1:])} over its locations "
                    "nor read only its class token, so its head has no per-location form"
                )
            streams.append(s)
        weight, bias = _read_affine(model, raw, streams)
        probe = [
            torch.randn(2, s.width, generator=torch.Generator().manual_seed(1 + i)) * float(t.abs().max())
            for i, (s, t) in enumerate(zip(streams, raw, strict=True))
        ]
        expected = torch.cat(probe, dim=1) @ weight.T + bias
        if not close_relative(
            _head(model, [s.constant(v.to(t)) for s, v, t in zip(streams, probe, raw, strict=True)]), expected
        ):
            raise CSRAError(
                f"model {name}: forward_head combines its {len(streams)} streams' pooled vectors non-linearly, so it cannot be applied per location"
            )
    patch_average = any(s.pooling == "token" for s in streams)
    info = AdapterInfo(
        name=name,
        family="timm-multistream",
        baseline_source="patch_average" if patch_average else "model_logits",
        weights=weights,
    )
    info.head = "the model's head over its streams, read off as one linear map per stream"
    info.notes.append(
        f"{len(streams)} feature streams: locations are their union ({' + '.join(str(s.locations) for s in streams)}), "
        "each scaled by the share of the image it covers (K / K_i) so that their mean is the head's output"
    )
    if patch_average:
        info.notes.append(
            "class-token streams: the baseline is the average of per-patch logits, not the model's own class-token logits"
        )
    adapter = MultiStreamAdapter(model, LocationHead(weight, bias), info, data_config, streams)
    adapter.check_size = size
    return adapter


def _read_affine(model: Any, raw: list[torch.Tensor], streams: list[Stream]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[W_1 | W_2 | ...]`` and ``b``: ``forward_head`` at 0, and at each stream's unit vectors."""
    device = raw[0].device

    def run(i: int | None, v: torch.Tensor) -> torch.Tensor:
        n = v.shape[0]
        parts = [
            s.constant(v if j == i else torch.zeros(n, s.width, device=device)).to(raw[j].dtype)
            for j, s in enumerate(streams)
        ]
        return _head(model, parts)

    at_zero = run(None, torch.zeros(1, 1, device=device))[0]
    # each stream's block read with the others at 0 (its own b is the same all-zero point)
    blocks = [read_affine(functools.partial(run, i), s.width, device)[0] for i, s in enumerate(streams)]
    return torch.cat(blocks, dim=1), at_zero
