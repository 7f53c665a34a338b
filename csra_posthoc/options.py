"""Run settings as typed option objects, each checked once when built (``__post_init__``).

Torch-free: the CLI builds these by keyword before it imports anything heavy. A bad value raises
:class:`~csra_posthoc.errors.CSRAError` naming the Python parameter (``img_size 5: ...``,
``param="img_size"``); the CLI maps the parameter to its flag (:mod:`csra_posthoc.cli.flags`).
Checks that need two option objects at once (an uncached temperature needs ``keep_maps``) or
torch (does cuda exist?) live in :mod:`csra_posthoc.evaluation.validate`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .defaults import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_HEADS,
    DEFAULT_LAMS,
    DEFAULT_SELECT_ON,
    DEFAULT_TEMPS,
    FIGURE_FORMATS,
    HEAD_COUNTS,
    MAX_IMG_SIZE,
    METRIC_NAMES,
    MIN_IMG_SIZE,
    TransformChoice,
)  # fmt: skip
from .errors import CSRAError
from .outputs import check_output_path, check_outputs

Transform = TransformChoice  # defaults.TransformChoice: auto (centre crop for single-label data, else square resize) | square | crop
Difficult = Literal["ignore", "positive", "negative"]  # VOC difficult objects
HeadChoice = Literal["model", "probe"]
AmpDtype = Literal["auto", "fp16", "bf16"]  # auto: fp16 on CUDA, bf16 on CPU
Decode = Literal["pil", "draft"]  # data.decode: pil exact; draft: JPEG DCT-domain downscale (changes pixels)
Backend = Literal["eager", "onnxruntime"]  # backends: how the statistics pass runs the model
CacheDtype = Literal["float32", "float16"]  # dtype of the statistics in the cache file


def _choice(param: str, value: Any, literal: Any) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise CSRAError(f"{param} {value}: choose {', '.join(choices[:-1])} or {choices[-1]}", param=param)


def check_img_size(img_size: int | None) -> None:
    """``img_size``: bounded, so 100000 is a clear line and not an out-of-memory kill."""
    if img_size is not None and not MIN_IMG_SIZE <= img_size <= MAX_IMG_SIZE:
        raise CSRAError(
            f"img_size {img_size}: must be between {MIN_IMG_SIZE} and {MAX_IMG_SIZE} pixels", param="img_size"
        )


def check_train_size(train_size: int | None, test_pool: bool | None) -> None:
    """``train_size``: the test-time pooling window's training resolution, bounded like ``img_size``."""
    if train_size is None:
        return
    if test_pool is False:
        raise CSRAError(
            f"train_size {train_size}: sets the window of test-time pooling, which is switched off here",
            param="train_size",
        )
    if (
        isinstance(train_size, bool)
        or not isinstance(train_size, int)
        or not MIN_IMG_SIZE <= train_size <= MAX_IMG_SIZE
    ):
        raise CSRAError(
            f"train_size {train_size!r}: must be between {MIN_IMG_SIZE} and {MAX_IMG_SIZE} pixels", param="train_size"
        )


MIN_MAX_THREADS = 64  # the bound on ``threads`` is max(this, 4 x the cores): more only oversubscribes


def max_threads() -> int:
    """The most torch threads a run may ask for: 4 x the machine's cores, at least 64 (torch
    itself crashes, without a message, on a count like 100000)."""
    return max(MIN_MAX_THREADS, 4 * (os.cpu_count() or 1))


def check_threads(threads: int | None) -> None:
    """``threads``: None (the caller's count) or 1 .. :func:`max_threads`."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise CSRAError(f"threads {threads!r}: must be >= 1 (or leave it unset: the caller's count)", param="threads")
    if threads > max_threads():
        raise CSRAError(
            f"threads {threads}: at most {max_threads()} (4 x this machine's {os.cpu_count() or 1} cores, at least {MIN_MAX_THREADS})",
            param="threads",
        )


@dataclass(frozen=True)
class ExtractOptions:
    """Settings of a forward pass over a dataset (image size, batch size, device, cache, ...)."""

    img_size: int | None = None  # square input side; None: the model's own input size
    batch_size: int = 32
    workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # auto | cpu | cuda[:N] (whether cuda exists is checked by validate.check_device)
    amp: bool = False  # backbone under autocast; the head always runs in fp32
    amp_dtype: AmpDtype = "auto"  # the autocast dtype when amp: fp16, bf16, or auto (fp16 on CUDA, bf16 on CPU)
    keep_maps: bool = False  # also cache full per-location scores
    cache_dir: str | Path | None = None  # None: $CSRA_POSTHOC_CACHE or the user cache dir
    use_cache: bool = True
    recompute: bool = False  # ignore (and overwrite) an existing cache entry
    transform: Transform = "auto"
    verify_images: bool = False  # cache key hashes image contents, not size + mtime
    quiet: bool = (
        False  # no progress bars or lines from extraction and the probe (the csra_posthoc logger still gets them)
    )
    decode: Decode = "pil"  # draft: faster JPEG decode, slightly different pixels (enters the cache key)
    backend: Backend = "eager"  # onnxruntime: the statistics pass on ONNX Runtime (CPU; needs the export extra)
    compile: bool = False  # torch.compile the backbone (start-up cost; pays on large sets)
    threads: int | None = (
        None  # torch threads during the loop; None: the caller's, capped on a busy CPU (restored after)
    )
    cache_dtype: CacheDtype = "float32"  # float16: half the cache file (enters the cache key)
    test_pool: bool | None = (
        None  # timm's test-time pooling statistic; None: on when the input exceeds the training size
    )
    train_size: int | None = None  # test-time pooling's training size; None: the model's own input size

    def __post_init__(self) -> None:
        check_img_size(self.img_size)
        check_train_size(self.train_size, self.test_pool)
        if self.batch_size < 1:
            raise CSRAError(f"batch_size {self.batch_size}: must be >= 1", param="batch_size")
        if self.workers < 0:
            raise CSRAError(f"workers {self.workers}: must be >= 0", param="workers")
        _choice("transform", self.transform, Transform)
        _choice("amp_dtype", self.amp_dtype, AmpDtype)
        if self.amp_dtype != "auto" and not self.amp:
            raise CSRAError(f"amp_dtype {self.amp_dtype} needs amp=True (mixed precision is off)", param="amp_dtype")
        _choice("decode", self.decode, Decode)
        _choice("backend", self.backend, Backend)
        _choice("cache_dtype", self.cache_dtype, CacheDtype)
        check_threads(self.threads)
        if self.backend == "onnxruntime" and (self.compile or self.amp):
            raise CSRAError(
                f"backend onnxruntime: runs the exported fp32 graph; drop {'`compile`' if self.compile else '`amp`'}",
                param="backend",
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise CSRAError(f"device {self.device}: choose auto, cpu or cuda", param="device")


def amp_precision(options: ExtractOptions, device_type: str) -> str | None:
    """The autocast dtype a run uses, ``fp16`` or ``bf16``; None without ``amp``.

    ``auto`` is fp16 on CUDA (tensor cores, the usual choice) and bf16 on CPU (CPU autocast's
    dtype). The resolved name enters the cache key: fp16 and bf16 statistics differ.
    """
    if not options.amp:
        return None
    if options.amp_dtype != "auto":
        return options.amp_dtype
    return "fp16" if device_type == "cuda" else "bf16"


@dataclass(frozen=True)
class DataOptions:
    """How a dataset is read (split, label file, subset, ...): everything here can change the
    samples or their labels, so the loaders record it for the cache key."""

    split: str | None = None  # None: the dataset's evaluation split (VOC2007 test, VOC2012 val, COCO val, ...)
    labels: str | Path | None = None  # csv: the label CSV; imagenet: a flat val's label file
    classes: list[str] | None = None  # VOC-layout / folder class names, in the head's order
    difficult: Difficult = "ignore"  # VOC difficult objects
    ann_file: str | Path | None = None  # COCO / WIDER annotation JSON outside the standard layout
    image_dir: str | Path | None = None  # COCO / WIDER image folder outside the standard layout
    keep_empty: bool = False  # COCO: keep images with no annotation (all negative)
    skip_missing: bool = False  # go on without images the annotations list but the disk lacks
    max_images: int | None = None  # seeded stratified subset
    subset_seed: int = 0

    def __post_init__(self) -> None:
        _choice("difficult", self.difficult, Difficult)
        if self.max_images is not None and self.max_images < 1:
            raise CSRAError(f"max_images {self.max_images}: must be >= 1", param="max_images")


def check_metric_name(name: str) -> None:
    base = name[: -len("_top3")] if name.endswith("_top3") else name
    if base not in METRIC_NAMES:
        raise CSRAError(
            f"metrics {name}: unknown; choose from {', '.join(METRIC_NAMES)} (add _top3 for top-3)", param="metrics"
        )


@dataclass(frozen=True)
class SweepOptions:
    """The grid of a sweep: lams, softmax temperatures, multi-head sets, extra metric columns, and
    the fixed lam reported beside the best (None: the paper's, 0.02 for ResNets and 0.2 otherwise);
    and how honest the report is about the gain (docs/uncertainty.md): where lam is chosen for the
    held-out row (``select_on``: ``"half"``, another split's name, or None for no held-out row),
    the paired-bootstrap resamples (``bootstrap``) and the seed of both."""

    lams: tuple[float, ...] = DEFAULT_LAMS
    temps: tuple[float, ...] = DEFAULT_TEMPS  # inf: the max; empty: no softmax variant
    heads: tuple[int, ...] = DEFAULT_HEADS  # empty: no multi-head variant
    metrics: tuple[str, ...] = ()
    fixed_lam: float | None = None
    select_on: str | None = DEFAULT_SELECT_ON  # half | a split of the dataset | None (no held-out row)
    bootstrap: int | None = DEFAULT_BOOTSTRAP  # resamples; None: no intervals
    seed: int = 0  # the half split and the bootstrap resamples

    def __post_init__(self) -> None:
        for name in ("lams", "temps", "heads", "metrics"):  # lists are accepted; stored as tuples (frozen, hashable)
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.lams:
            raise CSRAError("lams: give at least one value", param="lams")
        check_lams(self.lams)
        for t in self.temps:
            if math.isnan(t) or t <= 0:
                raise CSRAError(f"temps {t:g}: temperatures must be > 0 (inf for the max)", param="temps")
        for h in self.heads:
            if h not in HEAD_COUNTS:
                raise CSRAError(
                    f"heads {h}: the paper's head counts are {', '.join(map(str, HEAD_COUNTS))}", param="heads"
                )
        for m in self.metrics:
            check_metric_name(m)
        if self.fixed_lam is not None and not (math.isfinite(self.fixed_lam) and self.fixed_lam >= 0):
            raise CSRAError(f"fixed_lam {self.fixed_lam:g}: must be a finite number >= 0", param="fixed_lam")
        check_select_on(self.select_on)
        check_bootstrap(self.bootstrap)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise CSRAError(f"seed {self.seed!r}: must be an integer >= 0", param="seed")


MAX_BOOTSTRAP = 1_000_000  # resamples: memory grows with them (deltas per variant + chunk buffers): ~320 MB measured at the bound on 8 images


def check_bootstrap(bootstrap: int | None) -> None:
    """``bootstrap``: None (no intervals) or 1 .. :data:`MAX_BOOTSTRAP` resamples, so memory stays bounded."""
    if bootstrap is None:
        return
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 1:
        raise CSRAError(
            f"bootstrap {bootstrap!r}: the number of resamples must be an integer >= 1 (1000 is the usual choice)",
            param="bootstrap",
        )
    if bootstrap > MAX_BOOTSTRAP:
        raise CSRAError(
            f"bootstrap {bootstrap}: at most {MAX_BOOTSTRAP} resamples (memory grows with them: ~320 MB at the limit; 1000 is the usual choice)",
            param="bootstrap",
        )


def check_select_on(select_on: str | None) -> None:
    """``half`` or a split name (whether the split exists is the loader's to say, see api.run_sweep)."""
    if select_on is None:
        return
    if not isinstance(select_on, str) or not select_on.strip() or any(c in select_on for c in "/\\"):
        raise CSRAError(
            f"select_on {select_on!r}: give half or the name of another split of the dataset (e.g. trainval)",
            param="select_on",
        )


def check_lams(lams: Sequence[float]) -> None:
    bad = [lam for lam in lams if not math.isfinite(lam) or lam < 0]
    if bad:
        raise CSRAError(f"lams {bad[0]:g}: every lam must be a finite number >= 0", param="lams")


@dataclass(frozen=True)
class ModelSource:
    """Which model and where its weights come from: exactly one of a checkpoint, the pretrained
    weights (hub or packaged offline copy) or a random initialisation. ``apply`` / ``predict`` /
    ``attention`` also read ``head_file`` (a probe written by the sweep's ``save_head``, used
    instead of the model's own classifier) and, for ``apply`` with ``random_init``,
    ``num_classes`` (the random head's classes); the sweep fits or uses its own head
    (:class:`ProbeOptions`) and leaves both unset."""

    model: str
    checkpoint: str | Path | None = None
    pretrained: bool = False
    random_init: bool = False
    head_file: str | Path | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        check_weight_source(self.checkpoint, self.pretrained, self.random_init, model=self.model)
        if self.head_file is not None and not Path(self.head_file).is_file():
            raise CSRAError(f"head_file {self.head_file}: no such file", param="head_file")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1
        ):
            raise CSRAError(f"num_classes {self.num_classes!r}: must be an integer >= 1", param="num_classes")


@dataclass(frozen=True)
class PatchedFile:
    """The other model source of ``predict`` / ``attention``: a file written by ``apply`` (it holds
    the weights, the head, the settings and the preprocessing); ``model``, when given, must be the
    file's."""

    path: str | Path
    model: str | None = None


def model_source(
    model: str | None,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_init: bool = False,
    *,
    head_file: str | Path | None = None,
    num_classes: int | None = None,
    patched_file: str | Path | None = None,
) -> ModelSource | PatchedFile:
    """The source the given parameters name: a patched file (no weights or head besides it), or a
    model with exactly one weight source (and optionally a head file)."""
    if patched_file is not None:
        given = [
            n
            for n, v in (("checkpoint", checkpoint), ("head_file", head_file), ("num_classes", num_classes))
            if v is not None
        ]
        given += [n for n, v in (("pretrained", pretrained), ("random_init", random_init)) if v]
        if given:
            listed = " / ".join(f"`{n}`" for n in given)
            raise CSRAError(
                f"patched_file {patched_file} holds the weights and the head: drop {listed}", param="patched_file"
            )
        return PatchedFile(patched_file, model)
    if model is None:
        raise CSRAError(
            "model: give a model name with its weights (`checkpoint`, `pretrained` or `random_init`), or `patched_file`",
            param="model",
        )
    return ModelSource(model, checkpoint, pretrained, random_init, head_file=head_file, num_classes=num_classes)


PICKS: dict[str, str] = {
    "best": "best",
    "fixed": "fixed",
    "best-variant": "best_variant",
}  # pick -> the results file's row
TEST_POOL_PICK = (
    "test-pool"  # apply's pick of the results' test-pool row (timm's test-time pooling, docs/method.md §12)
)


def check_lam(lam: float, param: str = "lam") -> float:
    """``lam``: a finite number >= 0 (returned as a float)."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(lam, bool) or not math.isfinite(value) or value < 0:
        raise CSRAError(f"{param} {lam}: must be a finite number >= 0", param=param)
    return value


def check_variant(temperature: float | None, heads: int | None) -> None:
    """One temperature (> 0; inf: the max) or one of the paper's head counts, not both."""
    if temperature is not None and heads is not None:
        raise CSRAError(
            "temperature and `heads`: give one of them (heads use the paper's temperature sets)", param="temperature"
        )
    if heads is not None and (isinstance(heads, bool) or heads not in HEAD_COUNTS):
        raise CSRAError(f"heads {heads}: the paper's head counts are {', '.join(map(str, HEAD_COUNTS))}", param="heads")
    if temperature is not None and (math.isnan(float(temperature)) or float(temperature) <= 0):
        raise CSRAError(f"temperature {temperature}: must be > 0 (inf for the max)", param="temperature")


@dataclass(frozen=True)
class CSRASettings:
    """The CSRA settings of a patched model (``apply``, ``predict``, ``attention``): ``lam`` and one
    ``temperature`` (inf: the max) or ``heads`` H (the paper's temperature set); or a sweep's
    results file (``from_results``) whose row ``pick`` (best, fixed, best-variant) sets all three.

    What is not given is None; :func:`csra_posthoc.patched.settings.resolve_settings` (the one
    resolver) fills it in from the results row, the patched file's config or the defaults, and
    returns a resolved copy (``lam`` set; ``temperature`` set, inf for the max, unless ``heads`` is)."""

    lam: float | None = None
    temperature: float | None = None
    heads: int | None = None
    from_results: str | Path | None = None
    pick: str = "best"

    def __post_init__(self) -> None:
        if self.pick not in PICKS and self.pick != TEST_POOL_PICK:
            raise CSRAError(f"pick {self.pick}: choose {', '.join([*PICKS, TEST_POOL_PICK])}", param="pick")
        if self.lam is not None:
            object.__setattr__(self, "lam", check_lam(self.lam))
        check_variant(self.temperature, self.heads)
        if self.from_results is not None and self.given:
            listed = ", ".join(f"`{n}`" for n in self.given)
            raise CSRAError(
                f"from_results sets lam / temperature / heads: drop {listed}, or drop `from_results`",
                param="from_results",
            )

    @property
    def given(self) -> tuple[str, ...]:
        """The settings given directly (not from a results file)."""
        return tuple(n for n in ("lam", "temperature", "heads") if getattr(self, n) is not None)

    @property
    def row(self) -> str:
        """The results file's row ``pick`` names (``best``, ``fixed``, ``best_variant``; ``test-pool``: a ``rows`` entry)."""
        return PICKS.get(self.pick, self.pick)

    @property
    def pool_temperature(self) -> float:
        """The single-head temperature a head is built with (inf: the max; ignored with ``heads``)."""
        return math.inf if self.temperature is None else float(self.temperature)

    @property
    def label(self) -> str:
        """``max, λ=0.2`` / ``softmax T=2, λ=0.2`` / ``heads H=4, λ=0.2`` (resolved settings)."""
        lam = "?" if self.lam is None else f"{self.lam:g}"
        if self.heads is not None:
            return f"heads H={self.heads}, λ={lam}"
        t = math.inf if self.temperature is None else self.temperature
        return f"{'max' if math.isinf(t) else f'softmax T={t:g}'}, λ={lam}"


def check_weight_source(
    checkpoint: str | Path | None, pretrained: bool, random_init: bool, model: str | None = None
) -> None:
    if model is not None and model.startswith("hf:") and checkpoint is None and not random_init:
        return  # a Hugging Face folder is its own weight source (pretrained may be given or not)
    if sum([checkpoint is not None, pretrained, random_init]) != 1:
        raise CSRAError(
            "model needs exactly one weight source: checkpoint=PATH, pretrained=True or random_init=True", param="model"
        )
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            raise CSRAError(
                f"checkpoint {path}: is a directory; pass the weights file (.pth, .pt or .safetensors) in it",
                param="checkpoint",
            )
        if not path.is_file():
            raise CSRAError(f"checkpoint {path}: no such file", param="checkpoint")


@dataclass(frozen=True)
class ProbeOptions:
    """A linear probe fitted on the training split instead of the model's own head."""

    train_split: str | None = None  # None: the dataset's training split
    train_labels: str | Path | None = None  # csv: the training CSV
    probe_c: float = 0.01  # inverse L2 strength of the logistic regression
    save_head: str | Path | None = None  # write the fitted head (.safetensors)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.probe_c) and self.probe_c > 0):
            raise CSRAError(f"probe_c {self.probe_c:g}: must be a finite number > 0", param="probe_c")


@dataclass(frozen=True)
class OutputOptions:
    """Files a sweep writes besides its table (written atomically; checked writable up front)."""

    out: str | Path | None = None  # results JSON
    save_scores_to: str | Path | None = None  # NPZ with ids, labels, classes, baseline/best/fixed scores
    plot: str | Path | None = None  # lam curve figure (.png, .svg or .pdf; its folder must exist)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the results JSON (the demo's 'demo' block)

    def __post_init__(self) -> None:
        check_output_path(self.out, "out")
        check_output_path(self.save_scores_to, "save_scores_to")
        check_figure_path(self.plot, "plot")
        check_outputs(
            self.paths(), require_suffixes=False
        )  # the one output policy (README: Outputs); suffixes and inputs: validate_sweep_args

    def paths(self) -> dict[str, str | Path | None]:
        """The output files by parameter name (None: not written)."""
        return {"out": self.out, "save_scores_to": self.save_scores_to, "plot": self.plot}


def check_figure_path(path: str | Path | None, param: str = "path") -> None:
    """A figure file: a suffix matplotlib writes and an existing, writable folder (none is created)."""
    if path is None:
        return
    target = Path(path)
    if target.suffix.lower() not in FIGURE_FORMATS:
        raise CSRAError(f"{param} {target}: give a file ending in {', '.join(FIGURE_FORMATS)}", param=param)
    if target.is_dir():
        raise CSRAError(f"{param} {target}: is a directory; give a file name", param=param)
    if not target.absolute().parent.is_dir():
        raise CSRAError(f"{param} {target}: folder {target.parent} does not exist; create it first", param=param)
    check_output_path(target, param)


@dataclass(frozen=True)
class AnalysisOptions:
    """Reports read from the cached statistics without a new forward pass (docs/method.md §8-9):
    the per-class Δ table (``per_class``) and figure (``plot_classes``, .png / .svg / .pdf), and
    ImageNet-ReaL metrics (``real_labels``: the official ``real.json``; ``dataset`` imagenet only)."""

    per_class: bool = False
    plot_classes: str | Path | None = None
    real_labels: str | Path | None = None

    def __post_init__(self) -> None:
        check_figure_path(self.plot_classes, "plot_classes")
        if self.real_labels is not None and not Path(self.real_labels).is_file():
            raise CSRAError(
                f"real_labels {self.real_labels}: no such file (the ReaL labels, real.json)", param="real_labels"
            )
