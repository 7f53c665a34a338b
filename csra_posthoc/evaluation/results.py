"""The sweep's result types: what :func:`~csra_posthoc.evaluation.grid.sweep` returns and the
uncertainty analyses (held-out choice, bootstrap intervals, per-class deltas) attach to it.

Plain data with ``to_json``; the modules that compute them (grid, selection, bootstrap,
per_class) and the ones that report them (report.tables, report.plots) all import them from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..heads.scoring import head_temperatures

VariantKind = Literal[
    "max", "softmax", "heads", "test-pool"
]  # test-pool: timm's test-time pooling (extraction.test_pool), no lam


@dataclass(frozen=True)
class Variant:
    kind: VariantKind
    temperature: float | None = None
    heads: int | None = None

    @property
    def temperatures(self) -> tuple[float, ...]:
        if self.kind == "max":
            return (math.inf,)
        if self.kind == "softmax":
            assert self.temperature is not None, "a softmax variant has a temperature"
            return (float(self.temperature),)
        assert self.heads is not None, "a multi-head variant has a head count"
        return head_temperatures(int(self.heads))

    @property
    def label(self) -> str:
        if self.kind in ("max", "test-pool"):
            return self.kind
        if self.kind == "softmax":
            return f"softmax T={self.temperature:g}"
        return f"heads H={self.heads}"


@dataclass
class SweepRow:
    variant: Variant
    lam: float
    metrics: dict[str, float]
    per_class_ap: torch.Tensor  # (C,) AP (single-label: top-1 accuracy), NaN for classes left out

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant.kind,
            "temperature": self.variant.temperature,
            "heads": self.variant.heads,
            "lam": self.lam,
            "metrics": self.metrics,
        }


@dataclass
class SweepResult:
    primary: str  # "mAP" or "top1"
    baseline: SweepRow
    rows: list[SweepRow]
    best: SweepRow  # best lam of the max variant (the paper's "Varying lam")
    fixed: SweepRow  # max variant at the paper's fixed lam
    best_variant: SweepRow  # best over every variant and lam
    excluded_classes: list[str] = field(default_factory=list)
    # positive in every image that has a known label: AP is 100 whatever the scores; kept in the
    # mean (as scikit-learn and the official evaluation do), with the mAP without them reported
    all_positive_classes: list[str] = field(default_factory=list)
    mAP_without_all_positive: dict[str, float | None] | None = None
    model_logits: dict[str, float] | None = None  # metrics of the model's own logits when not the baseline
    # Is the gain real? (csra_posthoc.evaluation.uncertainty.assess fills these; docs/uncertainty.md)
    held_out: HeldOut | None = None  # lam chosen where it is not scored (select_on half / another split)
    bootstrap: dict[str, Interval] | None = None  # "best", "fixed", "held_out": 95 % interval of the delta
    bootstrap_n: int | None = None  # resamples behind ``bootstrap``
    bootstrap_seed: int | None = None
    uncertainty_notes: list[str] = field(default_factory=list)  # e.g. why there is no held-out row
    per_class_delta: dict[str, ClassDeltas] | None = (
        None  # "best", "fixed", "held_out": per-class Δ and intervals (csra_posthoc.evaluation.per_class)
    )
    test_pool: SweepRow | None = (
        None  # timm's test-time pooling score, when the statistics have it (docs/method.md §12)
    )
    thresholds: dict[str, dict[str, Any]] | None = (
        None  # per-class F1 thresholds by row (csra_posthoc.evaluation.calibration; multi-label only)
    )
    size_splits: SplitResult | None = None  # Δ by object size and clutter (csra_posthoc.evaluation.object_size)
    size_split_note: str | None = None  # why images with boxes gave no split


@dataclass
class Choice:
    """One direction: the setting chosen on ``chosen_on``, its score and delta where it was scored."""

    chosen_on: str
    variant: Variant
    lam: float
    score: float
    delta: float
    baseline: float | None = None  # the baseline (lam = 0) on the same images the choice is scored on

    def to_json(self) -> dict[str, Any]:
        v = self.variant
        return {
            "chosen_on": self.chosen_on,
            "variant": v.kind,
            "temperature": v.temperature,
            "heads": v.heads,
            "lam": self.lam,
            "score": self.score,
            "delta": self.delta,
            "baseline": self.score - self.delta if self.baseline is None else self.baseline,
        }


@dataclass
class HeldOut:
    """The held-out figure; ``parts`` are ``(image mask or None, scores (N, C))`` for :func:`bootstrap_deltas`."""

    select_on: str
    choices: list[Choice]
    parts: list[tuple[torch.Tensor | None, torch.Tensor]]
    seed: int | None = None

    @property
    def score(self) -> float:
        return sum(c.score for c in self.choices) / len(self.choices)

    @property
    def delta(self) -> float:
        return sum(c.delta for c in self.choices) / len(self.choices)

    @property
    def baseline(self) -> float:
        """The baseline over the same images the score is over (the mean of the halves' baselines for
        ``half``): ``score - baseline == delta``, so the row is self-consistent."""
        return self.score - self.delta

    @property
    def agreed(self) -> Choice | None:
        """The common choice when every direction chose the same setting, else None."""
        first = self.choices[0]
        return first if all((c.variant, c.lam) == (first.variant, first.lam) for c in self.choices) else None

    def to_json(self) -> dict[str, Any]:
        """``lam`` / ``variant`` / ``temperature`` / ``heads``: the setting every direction chose; None
        when the two halves chose differently (each direction's choice is in ``choices``)."""
        agreed = self.agreed
        out: dict[str, Any] = {
            "select_on": self.select_on,
            "lam": agreed.lam if agreed else None,
            "variant": agreed.variant.kind if agreed else None,
            "temperature": agreed.variant.temperature if agreed else None,
            "heads": agreed.variant.heads if agreed else None,
            "score": self.score,
            "delta": self.delta,
            "baseline": self.baseline,
            "choices": [c.to_json() for c in self.choices],
        }
        if self.seed is not None:
            out["seed"] = self.seed
        return out


@dataclass(frozen=True)
class Interval:
    """A delta (variant minus baseline, percent points) and its 95 % bootstrap interval."""

    delta: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0 (the gain or loss is not explained by the image sample)."""
        return self.low > 0.0 or self.high < 0.0

    def to_json(self) -> dict[str, float]:
        return {"delta": self.delta, "low": self.low, "high": self.high}


ROW_NAMES = ("best", "fixed", "held_out")


@dataclass
class ClassDeltas:
    """Per-class delta (percent points) and its 95 % interval; NaN where undefined (see module doc)."""

    classes: list[str]
    delta: np.ndarray  # (C,)
    low: np.ndarray  # (C,)
    high: np.ndarray  # (C,)

    @property
    def significant(self) -> np.ndarray:
        """``(C,)`` True where the interval excludes 0."""
        with np.errstate(invalid="ignore"):
            return (self.low > 0.0) | (self.high < 0.0)

    def to_json(self) -> dict[str, dict[str, float | None]]:
        """``{class: {"delta", "low", "high"}}`` (null for NaN)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            c: {"delta": num(d), "low": num(lo), "high": num(hi)}
            for c, d, lo, hi in zip(
                self.classes, self.delta.tolist(), self.low.tolist(), self.high.tolist(), strict=True
            )
        }


def ranked(deltas: ClassDeltas) -> list[int]:
    """Class indices by delta, largest gain first; classes without a delta last."""
    d = deltas.delta
    return sorted(range(len(d)), key=lambda k: (math.isnan(d[k]), -d[k] if not math.isnan(d[k]) else 0.0, k))


@dataclass(frozen=True)
class Splits:
    """The object-size and clutter splits of one evaluated set (csra_posthoc.evaluation.object_size):
    per (image, class) bin indices (-1: in no bin) and per-image groups of one evaluated set."""

    size_bin: np.ndarray  # (N, C) int: index into SIZE_BINS for positives with a box, else -1
    instance_bin: np.ndarray  # (N, C) int: index into INSTANCE_BINS for positives with a box, else -1
    label_group: np.ndarray  # (N,) int: index into LABEL_GROUPS, -1 for an image without a positive
    edges: tuple[float, float]  # relative-area tertiles
    without_box: int  # positive pairs without a box (in no size or instance bin)


@dataclass
class SplitResult:
    """Per row: split name -> bin -> (mean Δ, low, high) and per-class Δ; plus the counts."""

    splits: Splits
    classes: list[str]
    mean: dict[str, dict[str, dict[str, tuple[float, float, float]]]]  # row -> split -> bin -> (delta, low, high)
    per_class: dict[str, dict[str, np.ndarray]]  # row -> bin of the size split -> (C,) Δ
    counts: dict[str, dict[str, int]]  # split -> bin -> positives (size, instances) or images (labels)
