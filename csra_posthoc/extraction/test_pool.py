"""timm's test-time pooling, the nearest training-free peer of CSRA, from the same per-location scores
(docs/method.md §12).

timm's ``TestTimePoolHead`` (``timm/layers/test_time_pool.py``; ``validate.py --test-pool``) runs a
model on inputs larger than it was trained on: the classifier becomes a 1x1 convolution over the
feature map, average-pooled first with the training-size window (stride 1: the window is the
feature map's size at the training resolution), and the class score is ``0.5 * (mean + max)`` of
the pooled score map. The classifier is affine per location (``s = W x + b``), so pooling the
features and then classifying equals classifying every location and pooling the scores: this
module pools the per-location scores ``s`` ``(B, C, H * W)`` the extraction already has (one more
``(N, C)`` statistic in the cache, keyed by the training size).

Only for heads that are linear per location (:class:`~csra_posthoc.heads.location.LocationHead`
without the pooled LayerNorm) whose baseline is the model's own logits: for ConvNeXt-style pooled
norms or class-token / patch-average ViTs the order of pooling and classifier does not commute, and
the row is skipped with a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CSRAError
from ..heads.csra_head import CSRAHead

DEFINITION = (
    "timm's TestTimePoolHead: per-location class scores average-pooled with the training-size window "
    "(stride 1; the window is the feature map's size at the training resolution), then 0.5 * (mean + max) "
    "over the pooled map"
)


@dataclass(frozen=True)
class PoolSetting:
    """Whether the statistics get the test-pool score, and its training size (pixels, square)."""

    train_size: int
    explicit: bool  # asked for by test_pool=True (a head it cannot serve is then an error, not a note)

    def key(self) -> int:
        return self.train_size


def resolve_test_pool(
    test_pool: bool | None, train_size: int | None, input_size: int, model_input_size: int
) -> PoolSetting | None:
    """``test_pool`` None: on when the network's ``input_size`` exceeds the training size (timm's
    rule); True / False: on / off. ``train_size`` None: ``model_input_size`` (the model's data config)."""
    train = int(train_size) if train_size is not None else int(model_input_size)
    if test_pool is False:
        return None
    if test_pool is None and input_size <= train:
        return None
    return PoolSetting(train, explicit=bool(test_pool))


def unsupported(head: Any, baseline_source: str) -> str | None:
    """Why test-time pooling does not apply to this head (None: it does)."""
    if baseline_source != "model_logits":
        return "the model's logits are not the mean of its per-location scores (class-token / patch-average model)"
    if getattr(head, "nonlinear", False):  # models.nonlinear
        return "the head is non-linear after pooling, so pooling and the head do not commute"
    if getattr(head, "pooled_norm", False):
        return "the head normalises the pooled features (LayerNorm after pooling), so pooling and the classifier do not commute"
    return None


def train_grid(adapter: Any, train_size: int, device: torch.device) -> tuple[int, int]:
    """The feature map's ``(h, w)`` at the training resolution: the pooling window (one zero image through the backbone)."""
    x = torch.zeros(1, 3, train_size, train_size, device=device)
    try:
        with torch.inference_mode():
            fmap = adapter.feature_map(adapter.forward_backbone(x).float())
    except (RuntimeError, ValueError) as exc:
        raise CSRAError(
            f"train_size {train_size}: the model cannot run at that size ({exc})", param="train_size"
        ) from None
    h, w = (int(v) for v in fmap.shape[-2:])
    return h, w


def pool_scores(
    s: torch.Tensor, grid: tuple[int, int] | list[int], window: tuple[int, int] | list[int]
) -> torch.Tensor:
    """``0.5 * (mean + max)`` over the ``window``-average-pooled (stride 1) score map; ``s`` is
    ``(B, C, h * w)`` on ``grid``; a window larger than the map is clipped to it (one pooled cell)."""
    h, w = int(grid[0]), int(grid[1])
    kh, kw = min(int(window[0]), h), min(int(window[1]), w)
    pooled = F.avg_pool2d(s.float().unflatten(-1, (h, w)), kernel_size=(kh, kw), stride=1).flatten(2)
    return 0.5 * (pooled.mean(dim=-1) + pooled.amax(dim=-1))


class TimmPoolHead(CSRAHead):
    """A patched model's head for the test-pool row: the classifier per location, then
    :func:`pool_scores` with the training-size ``window`` (a :class:`~csra_posthoc.heads.csra_head.CSRAHead`
    at lam 0 otherwise: ``forward_with_baseline``'s baseline is still the plain average)."""

    def __init__(self, classifier: Any, window: tuple[int, int] | list[int], train_size: int) -> None:
        super().__init__(classifier, lam=0.0)
        self.window = (int(window[0]), int(window[1]))
        self.train_size = int(train_size)

    @property
    def variant(self) -> str:
        return "test-pool"

    def pool(self, s: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
        """From flat scores ``(B, C, K)`` of a square map (every preprocessing here is square);
        ``baseline`` (CSRAHead's lam = 0 term for non-linear heads) plays no part here."""
        side = math.isqrt(int(s.shape[-1]))
        return pool_scores(s, (side, side), self.window)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return pool_scores(self.classifier(fmap), (int(fmap.shape[-2]), int(fmap.shape[-1])), self.window)

    def extra_repr(self) -> str:
        return f"test-pool window={self.window[0]}x{self.window[1]} (train size {self.train_size}), 0.5 * (mean + max)"

    def config(self) -> dict[str, Any]:
        """The patched config's ``test_pool`` field."""
        return {"train_size": self.train_size, "window": list(self.window), "definition": DEFINITION}
