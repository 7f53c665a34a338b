"""Default sweep grids and the names flags accept: plain values, importable without torch.

The CLI builds its ``--help`` text from these, so they live apart from the torch code that uses them.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

DEFAULT_LAMS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_TEMPS: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
DEFAULT_HEADS: tuple[int, ...] = (1, 2, 4, 6, 8)

# Temperatures whose softmax-weighted average is cached per image and class; together with the
# max (T = inf) they cover every multi-head set of the paper (docs/method.md, section 2).
CACHED_TEMPERATURES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
# The paper's temperature set for H heads; the last head (but for H = 1) is always T = inf (the max).
HEAD_TEMPERATURES: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, math.inf),
    4: (1.0, 2.0, 4.0, math.inf),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf),
}
HEAD_COUNTS: tuple[int, ...] = tuple(HEAD_TEMPERATURES)  # the paper's multi-head sets

METRIC_NAMES: tuple[str, ...] = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "top1", "top5")
# the evaluation transform a run asks for; auto: centre crop for single-label data, else square resize
TransformChoice = Literal["auto", "square", "crop"]
TRANSFORM_CHOICES: tuple[str, ...] = get_args(TransformChoice)
# How a -1 (unknown) label is scored: left out of its class (VOC) or counted as a negative (WIDER-Attribute).
UnknownPolicy = Literal["exclude", "negative"]
HEAD_CHOICES: tuple[str, ...] = ("model", "probe")

# How honest a sweep's report is about its gain (docs/uncertainty.md): lam chosen on one half of
# the images and scored on the other (about one more sweep of work), and a paired bootstrap.
DEFAULT_SELECT_ON = "half"
DEFAULT_BOOTSTRAP = 1000  # resamples: a few seconds on a VOC-size set (docs/uncertainty.md has timings)
FIGURE_FORMATS: tuple[str, ...] = (".png", ".svg", ".pdf")

# The variables torchrun sets in every rank (read by the CLI without importing torch, and by extraction.distributed).
LAUNCH_VARS: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TORCHVISION_PREFIX = "torchvision:"  # a model name that is torchvision's (torchvision:resnet50), not timm's

MIN_IMG_SIZE = 16
MAX_IMG_SIZE = 4096  # a 4096 px square is already ~200 MB of activations per image in a ResNet's stem
