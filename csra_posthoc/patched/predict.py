"""``csra-posthoc predict``: the patched model's top classes per image, optionally beside the baseline's.

One forward pass per image gives both the CSRA scores and the baseline (lam = 0) scores
(:meth:`PatchedModel.forward_with_baseline`). A class is *predicted* when it is among the ``top_k``
highest CSRA scores and passes the threshold rule (:class:`ThresholdRule`):

- ``calibrated``: ``score_c >= thresholds[c]``, per-class thresholds on the raw score scale chosen on
  the sweep's data (a results file's row, or the patched config); the default when present;
- ``probability``: ``sigmoid(score) >= threshold`` (a float in [0, 1]; 0 keeps the whole top-k); the
  default (0.5) for multi-label heads without calibrated thresholds;
- ``rank``: the top-k, no threshold; the default for single-label heads (a single-label sweep's
  results, or a model's own softmax head), whose scores are not per-class probabilities.

``from_results`` (a sweep's results JSON, in :class:`~csra_posthoc.options.CSRASettings`) takes lam / variant, the transform and the class names
from the sweep, so predict scores the images as the sweep did. An image that fails to decode is
reported by name and the others are still predicted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from rich.table import Table

from ..data.base import load_rgb
from ..data.imagenet import imagenet_descriptions
from ..data.registry import SINGLE_LABEL_DATASETS
from ..data.transforms import TransformSpec, build_transform
from ..errors import CSRAError, first_line
from ..evaluation.grid import paper_fixed_lam
from ..evaluation.validate import check_img_size
from ..extraction.runtime import resolve_device
from ..heads.head_file import load_head
from ..heads.lookup import results_head_file
from ..log import say
from ..models import load_model
from ..options import PICKS, CSRASettings, ModelSource, PatchedFile
from ..outputs import check_outputs
from ..progress import progress_bar
from ..report.results_file import ResultsFile
from ..report.tables import report_console, write_json
from ..text import safe
from .apply import check_results_match, check_transform_choice, default_preprocessing, read_results
from .config import PatchedConfig
from .export import ExportedModel, export_format
from .model import PatchedModel, load_patched, patch
from .settings import resolve_settings

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def expand_images(inputs: Sequence[str | Path], warn_links: bool = True) -> tuple[list[Path], bool]:
    """Files as given, directories as their image files (recursive, sorted); True if a directory was given.
    ``warn_links``: a warning per link in a directory that leads nowhere (a loop, a broken image link)."""
    paths: list[Path] = []
    any_dir = False
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            any_dir = True
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if warn_links:
                _warn_unresolvable_links(p)
            if not found:
                raise CSRAError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this directory")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise CSRAError(f"{p}: no such image file or directory")
    if not paths:
        raise CSRAError("predict: give at least one image file or directory")
    return paths, any_dir


def _warn_unresolvable_links(folder: Path) -> None:
    """One warning line per link in ``folder`` that leads nowhere (a loop, or a broken image link):
    skipped, but said, not silently."""
    import errno
    import logging

    from rich.console import Console

    for f in sorted(folder.rglob("*")):
        if not f.is_symlink() or f.exists():
            continue
        try:
            f.resolve(strict=True)
            problem = "cannot be followed"
        except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
            problem = "is a symlink loop"
        except OSError as exc:
            problem = "is a symlink loop" if exc.errno == errno.ELOOP else "is a broken link"
        if problem != "is a broken link" or f.suffix.lower() in IMAGE_SUFFIXES:
            say(Console(stderr=True), f"[yellow]warning:[/] {safe(f)} {problem}: skipped", logging.WARNING)


def usable_transform(desc: TransformSpec, where: str) -> Any:
    """The transform a config's ``preprocessing`` describes, tried once on a small image: a bad
    description is one error naming the config, not a "cannot decode image" per image."""
    from PIL import Image

    try:
        transform = build_transform(desc)
        x = transform(Image.new("RGB", (37, 29), (128, 64, 32)))
        size = desc.size
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (3, size, size) or not bool(torch.isfinite(x).all()):
            raise ValueError(f"it makes a {tuple(getattr(x, 'shape', ()))} input, not a finite (3, {size}, {size}) one")
    except Exception as exc:
        raise CSRAError(
            f"{where}: its preprocessing {desc.to_json()!r} is unusable ({first_line(exc, 120)})", param="patched_file"
        ) from None
    return transform


def class_names(num_classes: int, given: Sequence[str] | None = None) -> list[str]:
    """``given`` (the file's / probe's / --classes names), else ImageNet's names for a 1000-class head
    (timm ships them, so this works offline), else ``class_<i>``."""
    if given is not None:
        if len(given) != num_classes:
            raise CSRAError(f"classes: {len(given)} names for a head with {num_classes} classes", param="classes")
        return list(given)
    if num_classes == 1000:
        return imagenet_descriptions()
    return [f"class_{i}" for i in range(num_classes)]


def check_predict_args(threshold: float | str | None, top_k: int, batch_size: int) -> None:
    if isinstance(threshold, str):
        if threshold != "calibrated":
            raise CSRAError(f"threshold {threshold}: give calibrated or a probability in [0, 1]", param="threshold")
    elif threshold is not None and (not (0.0 <= threshold <= 1.0) or math.isnan(threshold)):
        raise CSRAError(
            f"threshold {threshold}: must be a probability in [0, 1] (applied to sigmoid(score))", param="threshold"
        )
    if top_k < 1:
        raise CSRAError(f"top_k {top_k}: must be >= 1", param="top_k")
    if batch_size < 1:
        raise CSRAError(f"batch_size {batch_size}: must be >= 1", param="batch_size")


def parse_threshold(text: str | None) -> float | Literal["calibrated"] | None:
    """``--threshold`` as typed: ``calibrated`` or a probability (checked by :func:`check_predict_args`)."""
    if text is None or text == "calibrated":
        return text  # type: ignore[return-value]  # None or the literal
    try:
        return float(text)
    except ValueError:
        raise CSRAError(f"threshold {text!r}: give calibrated or a probability in [0, 1]", param="threshold") from None


ThresholdMode = Literal["calibrated", "probability", "rank"]


@dataclass(frozen=True)
class ThresholdRule:
    """Which of the top-k classes count as predicted: ``calibrated`` (``score_c >= values[c]``, raw
    score scale), ``probability`` (``sigmoid(score) >= probability``) or
    ``rank`` (the whole top-k)."""

    mode: ThresholdMode
    values: tuple[float, ...] | None = None
    probability: float | None = None
    source: str = ""

    def threshold(self, c: int) -> float | None:
        """The threshold class ``c`` is held to (raw score for calibrated, probability, None for rank)."""
        if self.mode == "calibrated":
            assert self.values is not None
            return self.values[c]
        return self.probability if self.mode == "probability" else None

    def passes(self, c: int, score: float, prob: float) -> bool:
        if self.mode == "rank":
            return True
        if self.mode == "probability":
            assert self.probability is not None
            return prob >= self.probability
        value = self.threshold(c)
        assert value is not None
        return score >= value

    def describe(self, top_k: int) -> str:
        if self.mode == "rank":
            return f"top-{top_k} by rank ({self.source}; no sigmoid threshold)"
        if self.mode == "probability":
            return f"top-{top_k} with sigmoid(score) >= {self.probability:g}"
        return f"top-{top_k} with score >= its class's calibrated threshold ({self.source})"


def threshold_rule(
    threshold: float | str | None,
    *,
    single_label: bool,
    calibrated: tuple[float, ...] | None,
    source: str,
    why_none: str = "",
) -> ThresholdRule:
    """``threshold`` as given (None: the default) -> the rule; ``calibrated`` are the thresholds at
    hand (None: none), ``source`` says where they (or the single-label task) come from."""
    if isinstance(threshold, str):
        if calibrated is None:
            raise CSRAError(
                f"threshold calibrated: {why_none or 'no calibrated thresholds here'}; give a probability, or a results file / patched file that has them",
                param="threshold",
            )
        return ThresholdRule("calibrated", values=calibrated, source=source)
    if threshold is not None:
        return ThresholdRule("probability", probability=float(threshold))
    if single_label:
        return ThresholdRule("rank", source=source)
    if calibrated is not None:
        return ThresholdRule("calibrated", values=calibrated, source=source)
    return ThresholdRule("probability", probability=0.5)


def _ranks(order: torch.Tensor) -> torch.Tensor:
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, order.numel() + 1)
    return rank


def _entry(
    image: Path,
    scores: torch.Tensor,
    baseline: torch.Tensor | None,
    names: list[str],
    rule: ThresholdRule,
    top_k: int,
    compare: bool,
) -> dict[str, Any]:
    """One image's JSON object; ``baseline`` is None for an exported file (it only holds the CSRA scores)."""
    k = min(top_k, scores.numel())
    order = torch.argsort(scores, descending=True, stable=True)
    rank = _ranks(order)
    if baseline is not None:
        base_order = torch.argsort(baseline, descending=True, stable=True)
        base_rank = _ranks(base_order)
    preds = []
    for c in order[:k].tolist():
        s = float(scores[c])
        prob = 1.0 / (1.0 + math.exp(-s)) if s > -700 else 0.0
        if rule.passes(c, s, prob):
            preds.append(
                {
                    "class": names[c],
                    "score": s,
                    "baseline_score": None if baseline is None else float(baseline[c]),
                    "probability": prob,
                    "rank": int(rank[c]),
                    "baseline_rank": None if baseline is None else int(base_rank[c]),
                    "threshold": rule.threshold(c),
                    "threshold_mode": rule.mode,
                }
            )
    entry: dict[str, Any] = {"image": str(image), "threshold_mode": rule.mode, "predictions": preds}
    if compare:
        assert baseline is not None, "compare needs the baseline scores"
        top, base_top = set(order[:k].tolist()), set(base_order[:k].tolist())
        entry["moved_in"] = [names[c] for c in order[:k].tolist() if c not in base_top]
        entry["moved_out"] = [names[c] for c in base_order[:k].tolist() if c not in top]
        shown = list(dict.fromkeys(order[:k].tolist() + base_order[:k].tolist()))
        entry["top_k"] = [
            {
                "class": names[c],
                "score": float(scores[c]),
                "baseline_score": float(baseline[c]),
                "rank": int(rank[c]),
                "baseline_rank": int(base_rank[c]),
            }
            for c in shown
        ]
    return entry


@torch.no_grad()
def predict_images(
    patched,
    images: Sequence[str | Path],
    *,
    threshold: float | ThresholdRule = 0.5,
    top_k: int = 5,
    classes: Sequence[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
    compare: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready object per image, in input order: ``{"image", "threshold_mode", "predictions": [...]}``,
    or ``{"image", "error", "predictions": []}`` for an image that cannot be decoded. ``threshold``: a
    probability on sigmoid(score), or a :class:`ThresholdRule`."""

    rule = (
        threshold
        if isinstance(threshold, ThresholdRule)
        else ThresholdRule("probability", probability=float(threshold))
    )
    check_predict_args(rule.probability, top_k, batch_size)
    paths, any_dir = expand_images(images)
    names = class_names(patched.num_classes, classes if classes is not None else patched.classes)

    transform = usable_transform(patched.config.preprocessing, "the patched model's config")
    dev = resolve_device(device)
    patched = patched.to(dev).eval()
    out: list[dict[str, Any]] = [{} for _ in paths]
    bar = progress_bar(console, f"predict {safe(patched.config.model)}", total=len(paths))
    with bar if (any_dir or len(paths) > batch_size) else contextlib.nullcontext(lambda n: None) as advance:
        for start in range(0, len(paths), batch_size):
            chunk = range(start, min(start + batch_size, len(paths)))
            tensors, good = [], []
            for i in chunk:
                try:
                    tensors.append(transform(load_rgb(paths[i])))
                    good.append(i)
                except Exception as exc:  # a broken file is reported, the rest still predicted
                    out[i] = {
                        "image": str(paths[i]),
                        "error": f"cannot decode image ({first_line(exc, 120)})",
                        "predictions": [],
                    }
            if tensors:
                scores, baseline = patched.forward_with_baseline(torch.stack(tensors).to(dev))
                for row, i in enumerate(good):
                    base = None if baseline is None else baseline[row].float().cpu()
                    out[i] = _entry(paths[i], scores[row].float().cpu(), base, names, rule, top_k, compare)
            advance(len(chunk))
    return out


def print_predictions(console: Console, results: list[dict[str, Any]], compare: bool, top_k: int) -> None:
    """One table row per image (top classes with scores); with ``compare`` one table per image with
    the baseline's and the patched ranks side by side, classes moved into / out of the top-k marked."""
    if not compare:
        has_baseline = any(p["baseline_score"] is not None for r in results for p in r["predictions"])
        title = "predictions (CSRA score; baseline in brackets)" if has_baseline else "predictions (CSRA score)"
        table = Table(title_justify="left", title=title)
        table.add_column("image")
        table.add_column("predicted classes")
        for r in results:
            if "error" in r:
                table.add_row(safe(Path(r["image"]).name), f"[red]{safe(r['error'])}[/]")
                continue
            text = (
                "\n".join(
                    f"{safe(p['class'])}  {p['score']:.3f}"
                    + ("" if p["baseline_score"] is None else f" ({p['baseline_score']:.3f})")
                    for p in r["predictions"]
                )
                or "[dim](none above threshold)[/]"
            )
            table.add_row(safe(Path(r["image"]).name), text)
        console.print(table)
        return
    for r in results:
        if "error" in r:
            console.print(f"[red]{safe(r['image'])}: {safe(r['error'])}[/]", soft_wrap=True)
            continue
        table = Table(title=f"{safe(r['image'])}  (top-{top_k}: baseline λ=0 vs patched)", title_justify="left")
        for col in ("class", "baseline rank", "baseline score", "patched rank", "patched score", ""):
            table.add_column(col, justify="left" if col == "class" else "right")
        for p in sorted(r["top_k"], key=lambda p: p["rank"]):
            name = p["class"]
            mark = (
                "[green]moved in[/]"
                if name in r["moved_in"]
                else ("[red]moved out[/]" if name in r["moved_out"] else "")
            )
            table.add_row(
                safe(name),
                str(p["baseline_rank"]),
                f"{p['baseline_score']:.3f}",
                str(p["rank"]),
                f"{p['score']:.3f}",
                mark,
            )
        console.print(table)


def run_predict(
    images: Sequence[str | Path],
    source: ModelSource | PatchedFile,
    settings: CSRASettings | None = None,
    *,
    img_size: int | None = None,
    transform: str = "auto",
    classes: Sequence[str] | None = None,
    threshold: float | Literal["calibrated"] | None = None,
    top_k: int = 5,
    batch_size: int = 16,
    device: str = "auto",
    compare: bool = False,
    json_out: str | Path | None = None,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Build the patched model (from a :class:`~csra_posthoc.options.PatchedFile`, or a
    :class:`~csra_posthoc.options.ModelSource` with ``settings``: given, the paper's fixed lam by
    default, or a sweep's results JSON and its ``pick`` row), predict, print, write JSON.

    ``threshold``: a probability on sigmoid(score), ``"calibrated"`` (the per-class thresholds of the
    results row / patched config), or None: calibrated when present, else rank (top-k) for a
    single-label head, else 0.5."""

    settings = settings or CSRASettings()
    console = console or report_console()
    check_predict_args(threshold, top_k, batch_size)
    check_img_size(img_size)
    check_transform_choice(transform)
    resolve_device(device)
    if json_out is not None and Path(json_out).is_dir():
        raise CSRAError(f"json_out {json_out}: is a directory; give a file name", param="json_out")
    from_results = settings.from_results
    if from_results is not None:
        check_from_results_args(source, img_size, transform, classes)
    image_files, _ = expand_images(
        images, warn_links=False
    )  # missing paths fail before any model is built (links: warned once, below)
    check_outputs(
        {"json_out": json_out}, {"images": image_files, **source_inputs(source), "from_results": from_results}
    )  # README: Outputs
    results: ResultsFile | None = None
    overridden = False
    if isinstance(source, PatchedFile):
        patched = load_patched_source(source, img_size, transform)
        usable_transform(patched.config.preprocessing, f"patched_file {source.path}: its config")
        if not isinstance(patched, PatchedModel) and (compare or settings.given):
            raise CSRAError(
                f"patched_file {source.path}: an exported {patched.format} file has lam fixed and no baseline; "
                "use the .safetensors file apply writes for `compare` / `lam` / `temperature` / `heads`",
                param="patched_file",
            )
        if settings.given:  # the file's classifier, other settings
            resolved = resolve_settings(settings, config=patched.config)
            patched.set_settings(resolved.lam, resolved.pool_temperature, resolved.heads)
            overridden = True
            console.print(
                f"[yellow]note:[/] settings of {safe(source.path)} overridden: {safe(patched.head.extra_repr())}"
            )
    elif from_results is not None:
        results = read_results(from_results)
        resolved = resolve_settings(settings, results=results)
        head_file = results_head_file(source.head_file, results, from_results, console)
        patched = patched_from_results(source, head_file, results, resolved, from_results)
    else:
        patched = patched_from_model(source, settings, img_size, transform)
    rule = predict_threshold_rule(threshold, patched.config, results, from_results, settings.pick, overridden)
    predictions = predict_images(
        patched,
        images,
        threshold=rule,
        top_k=top_k,
        classes=classes,
        batch_size=batch_size,
        device=device,
        compare=compare,
        console=console,
    )
    cfg = patched.config
    temps = ", ".join(str(t) for t in cfg.temperatures)
    console.print(
        f"{safe(cfg.model)}: mean + {cfg.lam:g} * {safe(cfg.variant)} (temperatures {safe(temps)})", soft_wrap=True
    )
    console.print(head_line(cfg, results, from_results, settings.pick), soft_wrap=True, highlight=False)
    console.print(f"transform: {safe(cfg.preprocessing.describe())}", soft_wrap=True, highlight=False)
    console.print(f"predicted: {safe(rule.describe(top_k))}", soft_wrap=True, highlight=False)
    print_predictions(console, predictions, compare, top_k)
    if json_out is not None:
        write_json(json_out, predictions)
        console.print(f"wrote {safe(json_out)}")
    return predictions


def source_inputs(source: ModelSource | PatchedFile) -> dict[str, Any]:
    """The input files a source reads, by parameter name (for the output policy)."""
    if isinstance(source, PatchedFile):
        return {"patched_file": source.path}
    return {"checkpoint": source.checkpoint, "head_file": source.head_file}


def check_from_results_args(source: ModelSource | PatchedFile, img_size, transform: str, classes) -> None:
    """``from_results`` sets the transform and the class names too (its settings: :class:`CSRASettings`):
    a parameter that would set them, or a patched file (it holds its own), is refused."""
    if isinstance(source, PatchedFile):
        raise CSRAError(
            "from_results with `patched_file`: the patched file already holds its settings; give one of them",
            param="from_results",
        )
    given = [name for name, value in (("img_size", img_size), ("classes", classes)) if value is not None] + (
        ["transform"] if transform != "auto" else []
    )
    if given:
        listed = ", ".join(f"`{n}`" for n in given)
        raise CSRAError(
            f"from_results sets the transform and the class names from the sweep: drop {listed}, or drop `from_results`",
            param="from_results",
        )


def patched_from_results(source: ModelSource, head_file, results: ResultsFile, settings: CSRASettings, path):
    """The patched model a sweep's row stands for: its (resolved) settings, its transform
    (``results.transform``), its class names; refused when the weights, head or classes are not the sweep's."""

    preprocessing = results.transform
    if preprocessing is None:
        raise CSRAError(
            f"from_results {path}: records no transform (an older sweep); run the sweep again with this version",
            param="from_results",
        )
    head = None
    if head_file is not None:
        if not Path(head_file).is_file():
            raise CSRAError(f"head_file {head_file}: no such file", param="head_file")
        head = load_head(head_file)
    num_classes = None
    if source.random_init and not str(results.head or "").startswith("linear probe"):
        num_classes = len(results.classes or [])  # as sweep --random-init built it (see apply)
    adapter = load_model(
        source.model,
        checkpoint=source.checkpoint,
        pretrained=source.pretrained,
        random_init=source.random_init,
        num_classes=num_classes,
        img_size=preprocessing.size,
    )
    patched = patch(
        adapter,
        settings.lam,  # type: ignore[arg-type]
        settings.pool_temperature,
        settings.heads,
        head=head,
        preprocessing=preprocessing,
    )
    check_results_match(results, patched.config)
    patched.config.classes = list(results.classes or [])  # the sweep's names, in the head's order (just checked)
    patched.config.from_results = {
        "path": str(Path(path).resolve()),
        "dataset": results.dataset,
        "split": results.split,
    }
    return patched


def _single_label(config: PatchedConfig, results: ResultsFile | None) -> tuple[bool, str]:
    """Whether the head is single-label (predict by rank), and why, in a few words."""

    if results is not None:
        single = results.primary_metric == "top1" or results.dataset in SINGLE_LABEL_DATASETS
        return single, f"single-label sweep on {results.dataset}"
    measured = config.from_results or {}
    if measured.get("dataset"):
        return measured["dataset"] in SINGLE_LABEL_DATASETS, f"single-label dataset {measured['dataset']}"
    if config.head == "model":
        return True, "the model's own softmax head"
    return False, ""


def predict_threshold_rule(
    threshold, config: PatchedConfig, results: ResultsFile | None, results_path, pick: str, overridden: bool
) -> ThresholdRule:
    """Contract: calibrated thresholds from the results row (``thresholds.<row>.values``) or the
    patched config (``thresholds``), default when present; else rank for single-label heads, else 0.5."""
    single, why = _single_label(config, results)
    values: tuple[float, ...] | None = None
    source, why_none = why, ""
    if results is not None:  # apply's reader of the row's thresholds: one rule (finite, one per class) for both
        row = PICKS[pick]
        found = results.thresholds(pick)
        if found is not None:
            values, source = tuple(found[0]), f"{found[1]}; {Path(results_path).name}, row {row}"
        else:
            why_none = f"from_results {results_path} has no thresholds for its {row!r} row"
    elif config.thresholds is not None:
        if overridden:
            why_none = "the patched file's thresholds were chosen for its own settings, not the `lam` / `temperature` / `heads` given"
        else:
            values = tuple(config.thresholds)  # checked by PatchedConfig.from_json when the file was read
            source = config.threshold_source or "the patched file's thresholds"
    else:
        why_none = "no calibrated thresholds (no results file, and no thresholds in a patched file)"
    return threshold_rule(
        threshold, single_label=single and values is None, calibrated=values, source=source, why_none=why_none
    )


def head_line(config: PatchedConfig, results: ResultsFile | None, results_path, pick: str) -> str:
    """One line: how many classes the head knows and where they come from (so an off-domain image's
    "bag 0.99997" is read for what it is)."""
    n = config.num_classes
    source = str(config.head_description)
    if config.head == "model" and n == 1000 and "ImageNet" not in source:
        source += " (ImageNet)"
    line = f"{n} classes: {safe(source)}"
    if results is not None:
        line += f"; settings from {safe(results_path)} (row {safe(pick)}, measured on {safe(results.dataset)} {safe(results.split)})"
    return line


def patched_from_model(source: ModelSource, settings: CSRASettings, img_size: int | None, transform: str):
    """The patched model from a model and its weights (``predict`` and ``attention``): the model's
    own head or ``source.head_file`` (a probe written by sweep --save-head); ``settings`` resolved
    with the paper's fixed lam as the default lam."""

    resolved = resolve_settings(settings, default_lam=paper_fixed_lam(source.model))
    head = load_head(source.head_file) if source.head_file is not None else None
    adapter = load_model(
        source.model,
        checkpoint=source.checkpoint,
        pretrained=source.pretrained,
        random_init=source.random_init,
        img_size=img_size,
    )
    preprocessing = default_preprocessing(adapter, transform, img_size, head[1] if head is not None else None)
    return patch(
        adapter,
        resolved.lam,  # type: ignore[arg-type]
        resolved.pool_temperature,
        resolved.heads,
        head=head,
        preprocessing=preprocessing,
    )


def load_patched_source(source: PatchedFile, img_size: int | None, transform: str):
    """A :class:`PatchedFile` as a model: ``.safetensors`` (a :class:`PatchedModel`), or an exported
    ``.onnx`` / ``.pt2`` / ``.ts`` file (scores only). The file holds its input size and preprocessing,
    so ``img_size`` and ``transform`` are refused."""

    path = Path(source.path)
    if not path.is_file():
        raise CSRAError(f"patched_file {path}: no such file", param="patched_file")
    fmt = export_format(path) if path.suffix.lower() in (".onnx", ".pt2", ".ts", ".safetensors") else None
    if fmt is None:
        raise CSRAError(
            f"patched_file {path}: give a file written by apply (.safetensors, .onnx, .pt2 or .ts)",
            param="patched_file",
        )
    if img_size is not None or transform != "auto":
        listed = ", ".join(
            f"`{n}`" for n, v in (("img_size", img_size is not None), ("transform", transform != "auto")) if v
        )
        raise CSRAError(
            f"patched_file {path} holds its input size and preprocessing: drop {listed}", param="patched_file"
        )
    patched = load_patched(path) if fmt == "safetensors" else ExportedModel(path)
    if source.model is not None and source.model != patched.config.model:
        raise CSRAError(
            f"patched_file {path} holds {patched.config.model}, not model={source.model}", param="patched_file"
        )
    return patched
