"""End-to-end functions behind the CLI commands (importable: the CLI only parses flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from .adapters import load_model
from .data import TRAIN_SPLITS, LabelledImages, load_dataset
from .errors import CSRAError
from .extraction import extract
from .options import DataOptions, ExtractOptions
from .lam_sweep import DEFAULT_HEADS, DEFAULT_LAMS, DEFAULT_TEMPS, sweep
from .probe import fit_probe
from .report import print_table, report_console, results_dict, save_scores, write_json

METRIC_NAMES = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "top1", "top5")


def load_training_split(
    dataset: str,
    data_dir: str | Path,
    train_split: str | None,
    train_labels: str | Path | None,
    evaluated: LabelledImages,
    data: DataOptions | None = None,
) -> LabelledImages:
    """The split a probe is fitted on: the dataset's training split (or ``--train-split``), or for
    CSV ``--train-labels``; same classes and loader options as ``evaluated``, no shared image."""
    data = data or DataOptions()
    if dataset == "csv":
        if train_labels is None:
            raise CSRAError("--head probe on --dataset csv needs --train-labels FILE.csv (the training split)")
        train = load_dataset("csv", data_dir, data, split="train", labels=train_labels)
    else:
        split = train_split or TRAIN_SPLITS.get(dataset)
        if split is None:
            raise CSRAError(f"--head probe: {dataset} has no training split; pass --train-split")
        if data.ann_file is not None or data.image_dir is not None:
            raise CSRAError(
                "--head probe with --ann-file / --image-dir: the training split's files cannot be inferred; "
                "use the standard layout under --data-dir"
            )
        classes = evaluated.classes if dataset in ("voc2007", "voc2012", "folder") else None
        try:
            train = load_dataset(dataset, data_dir, data, split=split, classes=classes, labels=None)
        except CSRAError as exc:
            raise CSRAError(f"--head probe needs a training split: {exc}") from None
    if train.classes != evaluated.classes:
        raise CSRAError(
            f"--head probe: the training split's classes differ from the evaluated split's "
            f"({len(train.classes)} vs {len(evaluated.classes)}; same names, same order needed)"
        )
    shared = set(zip(train.paths, train.boxes or [None] * len(train))) & set(zip(evaluated.paths, evaluated.boxes or [None] * len(evaluated)))
    if shared:
        raise CSRAError(
            f"--head probe: {len(shared)} samples are in both the training split ({train.split}) and the evaluated "
            f"split ({evaluated.split}), e.g. {sorted(shared, key=str)[0][0]}; the probe must not see evaluated images"
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
    data: DataOptions | None = None,
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
    images = load_dataset(dataset, data_dir, data)
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
        train = load_training_split(dataset, data_dir, train_split, train_labels, images, data)
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
