"""The one interface every model family implements.

An adapter turns an image batch into two things from a single forward pass: the per-location
class scores ``s`` ``(B, C, H*W)`` (the model's classifier applied at every location of the
pre-pool feature map) and the model's own logits ``(B, C)``, so the identity
``mean_k s == logits`` can be checked on every batch.
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from ..heads.location import LocationHead

BaselineSource = Literal["model_logits", "patch_average"]
LocationHeadKind = Literal["linear", "nonlinear"]  # nonlinear: models.nonlinear (baseline = logits, head per location)

IDENTITY_TOLERANCE = 1e-3  # relative: |mean_k s - logits| <= tolerance * identity_scale(logits)


def identity_scale(max_abs_logit: float) -> float:
    """What the identity's difference is measured against: float32 rounding grows with the logits'
    magnitude, so an absolute tolerance would refuse a correct head whose logits are large."""
    return max(1.0, max_abs_logit)


@dataclass(frozen=True)
class DataConfig:
    """What the model expects of its input (from timm's data config or torchvision's weights)."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"  # timm: center | squash | border


@dataclass
class AdapterInfo:
    """How the adapter was built: goes into the cache key and the report."""

    name: str
    family: str
    baseline_source: BaselineSource
    weights: str  # "checkpoint:<path>", "pretrained", "random-init", ...
    weights_fingerprint: str = ""
    head: str = "the model's own classifier"
    notes: list[str] = field(default_factory=list)
    location_head: LocationHeadKind = "linear"


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode, then put back the mode of every submodule that was training
    (a caller's model is used, never left in another mode, and its batch-norm statistics never move)."""
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


class ModelAdapter(nn.Module):
    """A backbone plus its classifier applied per location."""

    check_size: int | None = None  # the input side the load-time checks ran at (None: data_config.input_size)

    def __init__(self, model: nn.Module, head: LocationHead, info: AdapterInfo, data_config: DataConfig) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.info = info
        self.data_config = data_config

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def wrapped(self) -> Any:
        """The wrapped model, for its architecture's own attributes (``forward_features``, ``layer4``,
        ...): ``nn.Module``'s typing cannot know them, so this is ``Any`` on purpose."""
        return self.model

    @abstractmethod
    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output (feature map or tokens): the part that may run under AMP."""

    @abstractmethod
    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        """The pre-pool feature map ``(B, d, H, W)`` from the backbone's output."""

    @abstractmethod
    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        """The model's own logits from the backbone's output (its own head, unmodified)."""

    def scores_from_backbone(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-location scores ``(B, C, K)`` and the model's logits ``(B, C)``, both in fp32."""
        with torch.autocast(device_type=raw.device.type, enabled=False):
            raw = raw.float()
            return self.head(self.feature_map(raw)), self.model_logits(raw).float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scores_from_backbone(self.forward_backbone(x))


def probe_input(model: nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    """The seeded random ``batch`` x 3 x ``size`` x ``size`` input the load-time checks read a
    model's head off, on the model's device (``patch()`` may be given a model already on a GPU)."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    first = next(iter(model.parameters()), None)
    return x.to(first.device) if first is not None else x


PROBE_CHUNK = 256  # unit vectors per call while reading an affine map off


def close_relative(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    """Same shape and ``max |a - b| <= tol * max(1, max |b|)``: the relative bar of the load-time checks."""
    return a.shape == b.shape and float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


@torch.no_grad()
def read_affine(
    fn: Callable[[torch.Tensor], torch.Tensor], width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of a map ``fn`` on ``(N, width)`` vectors, assumed affine: ``b = fn(0)``, the columns
    of ``W`` are ``fn(e_i) - b`` (unit vectors in chunks); the caller checks the assumption."""
    at_zero = fn(torch.zeros(1, width, device=device))[0]
    eye = torch.eye(width, device=device)
    cols = [fn(eye[i : i + PROBE_CHUNK]) - at_zero for i in range(0, width, PROBE_CHUNK)]
    return torch.cat(cols).T.contiguous(), at_zero


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Patch tokens ``(B, K, D)`` to a feature map ``(B, D, H, W)``."""
    k = int(tokens.shape[1])  # a plain int even while tracing (the batch axis stays free)
    if grid is None or grid[0] * grid[1] != k:
        side = math.isqrt(k)
        if side * side != k:
            raise ValueError(f"cannot arrange {k} patch tokens on a grid")
        grid = (side, side)
    return tokens.transpose(1, 2).unflatten(2, (int(grid[0]), int(grid[1])))
