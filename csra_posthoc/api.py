"""End-to-end functions behind the CLI commands (importable: the CLI only parses flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from .adapters import load_model
from .data import LabelledImages, load_dataset
from .data.voc import DifficultPolicy
from .errors import CSRAError
from .extraction import extract
from .options import ExtractOptions
from .lam_sweep import DEFAULT_HEADS, DEFAULT_LAMS, DEFAULT_TEMPS, sweep
from .probe import fit_probe
from .report import print_table, report_console, results_dict, save_scores, write_json

TRAIN_SPLITS = {"voc2007": "trainval", "voc2012": "train"}

METRIC_NAMES = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "top1", "top5")


def load_training_split(
    dataset: str,
    data_dir: str | Path,
    train_split: str | None,
    train_labels: str | Path | None,
    evaluated: LabelledImages,
    difficult: DifficultPolicy = "ignore",
) -> LabelledImages:
    """The split a probe is fitted on: VOC trainval (or ``--train-split``), CSV ``--train-labels``."""
    if dataset == "csv":
        if train_labels is None:
            raise CSRAError("--head probe on --dataset csv needs --train-labels FILE.csv (the training split)")
        train = load_dataset("csv", data_dir, "train", train_labels)
    else:
        split = train_split or TRAIN_SPLITS.get(dataset)
        if split is None:
            raise CSRAError(f"--head probe: {dataset} has no training split; pass --train-split")
        try:
            train = load_dataset(dataset, data_dir, split, classes=evaluated.classes, difficult=difficult)
        except CSRAError as exc:
            raise CSRAError(f"--head probe needs a training split: {exc}") from None
    if train.classes != evaluated.classes:
        raise CSRAError("--train-labels: its classes differ from the evaluated split's (same names, same order)")
    shared = set(train.paths) & set(evaluated.paths)
    if shared:
        raise CSRAError(
            f"--head probe: {len(shared)} images are in both the training split ({train.split}) and the evaluated "
            f"split ({evaluated.split}), e.g. {sorted(shared)[0]}; the probe must not see evaluated images"
        )
    return train


def run_sweep(
    model: str,
    dataset: str,
    data_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_init: bool = False,
    head: str = "model",
    train_split: str | None = None,
    train_labels: str | Path | None = None,
    probe_c: float = 0.01,
    save_head: str | Path | None = None,
    split: str | None = None,
    labels: str | Path | None = None,
    classes: list[str] | None = None,
    difficult: DifficultPolicy = "ignore",
    options: ExtractOptions | None = None,
    lams: Sequence[float] = DEFAULT_LAMS,
    temps: Sequence[float] = DEFAULT_TEMPS,
    heads: Sequence[int] = DEFAULT_HEADS,
    metrics: Sequence[str] = (),
    out: str | Path | None = None,
    save_scores_to: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    dataset_label: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Load, extract (or reuse the cache), sweep, print the table, write JSON / NPZ; returns the JSON dict."""
    console = console or report_console()
    for m in metrics:
        base = m[: -len("_top3")] if m.endswith("_top3") else m
        if base not in METRIC_NAMES:
            raise CSRAError(f"--metrics {m}: unknown; choose from {', '.join(METRIC_NAMES)} (add _top3 for top-3)")
    if head not in ("model", "probe"):
        raise CSRAError(f"--head {head}: choose model (the model's own classifier) or probe")
    images = load_dataset(dataset, data_dir, split, labels, classes, difficult)
    if dataset_label:  # a VOC-layout dataset that is not VOC (the demo's mosaics, say)
        images.dataset = dataset_label
    adapter = load_model(
        model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_init=random_init,
        num_classes=len(images.classes) if random_init and head == "model" else None,
    )
    if head == "probe":
        train = load_training_split(dataset, data_dir, train_split, train_labels, images, difficult)
        train.dataset = images.dataset
        adapter = fit_probe(adapter, train, c=probe_c, options=options, save_head_to=save_head, console=console)
    elif save_head is not None:
        raise CSRAError("--save-head needs --head probe (the model's own head is already in its weights)")
    if adapter.info.weights == "random-init":
        console.print("[yellow]warning:[/] --random-init: the numbers below measure nothing but the code")
    stats = extract(adapter, images, options, console=console)
    result = sweep(stats, lams=lams, temps=temps, heads=heads)
    print_table(console, result, stats, list(metrics))
    data = results_dict(result, stats, extra)
    if out is not None:
        write_json(out, data)
        console.print(f"wrote {out}")
    if save_scores_to is not None:
        save_scores(save_scores_to, result, stats)
        console.print(f"wrote {save_scores_to}")
    return data
