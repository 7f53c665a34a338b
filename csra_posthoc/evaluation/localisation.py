"""Pointing game: does a class's per-location score peak inside one of the class's boxes?

Pure functions, no torch. A grid cell ``(row, col)`` of an ``h x w`` feature map is mapped to the
point in the ORIGINAL image that its centre sees through the transform that was actually used
(:func:`cell_centre`); the cell "points" at that point. A positive (image, class) pair is a hit when
the class's arg-max cell's centre falls inside one of the class's boxes (edges included). Chance is
the hit rate of a uniformly random cell under the same rule: the fraction of the ``h * w`` cell
centres that fall inside one of the class's boxes, averaged over the same pairs. Pairs whose label
is unknown / difficult (not 1) are left out, as are positive pairs without any box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from csra_posthoc.errors import CSRAError

Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in original-image pixels

DEFINITION = (
    "pointing game: a positive (image, class) pair is a hit when the centre of the class's arg-max "
    "grid cell, mapped to the original image through the evaluation transform, lies inside one of the "
    "class's boxes; chance = mean over the same pairs of the fraction of grid-cell centres inside the "
    "class's boxes (the hit rate of a uniformly random cell); unknown/difficult labels and positives "
    "without boxes are left out"
)


def cell_centre(
    transform: Mapping[str, Any], grid: tuple[int, int], cell: tuple[int, int], image_size: tuple[int, int]
) -> tuple[float, float]:
    """Centre of ``cell`` (row, col) of an ``grid`` (h, w) map, in original-image pixels (x, y).

    ``transform`` is :func:`csra_posthoc.data.transforms.transform_description`'s dict;
    ``image_size`` is the original (width, height). Square resize stretches each axis on its own;
    a centre crop (crop_mode 'center') resizes the short side to ``resize`` and cuts the central
    ``size`` square. Other transforms can not be mapped: :class:`CSRAError`."""
    h, w = grid
    row, col = cell
    width, height = image_size
    if not (0 <= row < h and 0 <= col < w):
        raise CSRAError(f"cell {cell} outside a {h}x{w} grid")
    u, v = (col + 0.5) / w, (row + 0.5) / h  # fraction of the network input
    kind = transform.get("kind")
    if kind == "square-resize":
        return u * width, v * height
    if kind == "center-crop" and transform.get("crop_mode", "center") == "center":
        size, resize = float(transform["size"]), float(transform["resize"])
        scale = resize / min(width, height)  # original -> resized pixels (short side to ``resize``)
        rw, rh = width * scale, height * scale
        left, top = (rw - size) / 2.0, (rh - size) / 2.0
        return (left + u * size) / scale, (top + v * size) / scale
    raise CSRAError(
        f"transform {kind!r} (crop_mode {transform.get('crop_mode')!r}) can not be mapped to image coordinates",
        param="transform",
    )


def _inside(point: tuple[float, float], boxes: Sequence[Box]) -> bool:
    x, y = point
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in boxes)


@dataclass(frozen=True)
class PointingScore:
    hits: int
    chance_sum: float
    pairs: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.pairs if self.pairs else math.nan

    @property
    def chance_rate(self) -> float:
        return self.chance_sum / self.pairs if self.pairs else math.nan


def pointing_game(
    labels: Sequence[Sequence[int]],
    argmax: Sequence[Sequence[int]],
    grid: tuple[int, int],
    boxes: Sequence[Mapping[int, Sequence[Box]]],
    image_sizes: Sequence[tuple[int, int]],
    transform: Mapping[str, Any],
    classes: Sequence[str],
) -> dict[str, Any]:
    """The pointing game over ``n`` images and ``k`` classes.

    ``labels[i][c]``: 1 positive, 0 negative, anything else unknown/difficult (left out);
    ``argmax[i][c]``: flat index ``row * w + col`` into the ``grid`` (h, w) of class c's arg-max
    location; ``boxes[i]``: class index -> boxes (original pixels) of image i; ``image_sizes[i]``:
    (width, height). Returns the JSON section ``{"pointing_game": {...}, "definition": ...}``."""
    h, w = grid
    if len(labels) != len(argmax) or len(labels) != len(boxes) or len(labels) != len(image_sizes):
        raise CSRAError("labels, argmax, boxes and image_sizes must have one entry per image")
    per_class = {c: [0, 0.0, 0] for c in range(len(classes))}
    for lab, top, img_boxes, size in zip(labels, argmax, boxes, image_sizes, strict=True):
        centres = [cell_centre(transform, grid, (r, q), size) for r in range(h) for q in range(w)]
        for c, y in enumerate(lab):
            cb = list(img_boxes.get(c, ()))
            if int(y) != 1 or not cb:
                continue
            flat = int(top[c])
            if not 0 <= flat < h * w:
                raise CSRAError(f"arg-max index {flat} outside a {h}x{w} grid")
            acc = per_class[c]
            acc[0] += int(_inside(centres[flat], cb))
            acc[1] += sum(_inside(p, cb) for p in centres) / (h * w)
            acc[2] += 1
    total = PointingScore(
        sum(int(a[0]) for a in per_class.values()),
        sum(float(a[1]) for a in per_class.values()),
        sum(int(a[2]) for a in per_class.values()),
    )

    def entry(s: PointingScore) -> dict[str, Any]:
        return {"hit_rate": s.hit_rate, "chance_rate": s.chance_rate, "pairs": s.pairs, "hits": s.hits}

    game = entry(total)
    game["per_class"] = {
        classes[c]: entry(PointingScore(int(a[0]), float(a[1]), int(a[2]))) for c, a in per_class.items() if a[2]
    }
    return {"pointing_game": game, "definition": DEFINITION}


def summary_line(section: Mapping[str, Any]) -> str:
    """The table's line, e.g. ``pointing game: 61.2 % of 1,234 positive (image, class) pairs hit a box (chance 18.4 %)``."""
    g = section["pointing_game"]
    if not g["pairs"]:
        return "pointing game: no positive (image, class) pair with a box"
    return f"pointing game: {100 * g['hit_rate']:.1f} % of {g['pairs']:,} positive (image, class) pairs hit a box (chance {100 * g['chance_rate']:.1f} %)"


ARGMAX_OF = "the per-location class score s_k (the max term's location): one location per (image, class), the same for every lam"


def statistics_pointing_game(stats: Any, images: Any) -> dict[str, Any] | None:
    """The pointing game of a sweep's statistics (:class:`~csra_posthoc.extraction.statistics.ClassStatistics`)
    on its images (:class:`~csra_posthoc.data.LabelledImages`, same ids in the same order): the
    section :func:`pointing_game` returns plus ``grid`` and ``argmax_of``, or None when the images
    have no boxes or the statistics no arg-max. A transform that can not be mapped back to the
    image raises :class:`CSRAError` (the caller reports it)."""
    if images.object_boxes is None or images.image_sizes is None or stats.argmax is None or not stats.info.grid:
        return None
    if list(stats.ids) != list(images.ids):
        raise CSRAError("statistics and images disagree on the image ids", param="images")
    h, w = (int(v) for v in stats.info.grid)
    section = pointing_game(
        stats.labels.tolist(),
        stats.argmax.tolist(),
        (h, w),
        images.object_boxes,
        images.image_sizes,
        stats.info.transform,
        list(stats.classes),
    )
    return {**section, "grid": [h, w], "argmax_of": ARGMAX_OF}
