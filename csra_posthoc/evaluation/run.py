"""End-to-end functions behind the CLI commands (importable: the CLI only parses flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..cache.resolution import (
    probe_settings,
    read_memo,
    resolution_key,
    resolution_of,
    statistics_location,
    weights_source_stamp,
    write_memo,
)  # fmt: skip
from ..cache.store import remove_orphans, resolve_cache_dir
from ..data import LabelledImages, dataset_entry, load_dataset
from ..data.real_labels import RealLabels, print_real_table, real_metrics
from ..errors import CSRAError
from ..extraction.distributed import (
    DistContext,
    broadcast_state_dict,
    check_config_agreement,
    check_status,
    current,
    main_console,
    main_decides_reuse,
    shard_for,
    stage,
)
from ..extraction.probe import fit_probe
from ..extraction.run import extract, read_cached_statistics
from ..extraction.statistics import ClassStatistics
from ..log import output_console
from ..models import ModelAdapter, load_model
from ..models.hub import require_reachable_weights
from ..options import (
    AnalysisOptions,
    DataOptions,
    ExtractOptions,
    ModelSource,
    OutputOptions,
    ProbeOptions,
    SweepOptions,
)
from ..outputs import check_outputs_not_read
from ..progress import console_bar
from ..report.plots import plot_lam_curve
from ..report.tables import print_table, report_console, results_dict, save_scores, write_json
from ..text import safe
from ..version import __version__
from .calibration import sweep_thresholds
from .grid import grid_rows, paper_fixed_lam, sweep
from .localisation import statistics_pointing_game, summary_line
from .object_size import report_splits, splits_for
from .per_class import plot_per_class, print_per_class_table
from .results import SweepResult
from .uncertainty import assess, max_band
from .validate import sweep_output_paths, validate_sweep_args


def load_training_split(
    dataset: str,
    data_dir: str | Path,
    train_split: str | None,
    train_labels: str | Path | None,
    evaluated: LabelledImages,
    data: DataOptions | None = None,
) -> LabelledImages:
    """The split a probe is fitted on: the dataset's training split (its registry entry's, or
    ``train_split``), or for CSV ``train_labels``; same classes and loader options as ``evaluated``,
    no shared image."""
    data = data or DataOptions()
    entry = dataset_entry(dataset)
    if entry.train_needs_labels:
        if train_labels is None:
            raise CSRAError(
                f"head='probe' on dataset {dataset} needs train_labels=FILE.csv (the training split)",
                param="train_labels",
            )
        try:
            train = load_dataset(dataset, data_dir, data, split="train", labels=train_labels)
        except CSRAError as exc:  # the loader names its `labels`: here that file is train_labels
            if exc.param != "labels":
                raise
            message = str(exc)
            message = (
                "train_labels" + message[len("labels") :]
                if message.startswith("labels ")
                else f"train_labels {train_labels}: {message}"
            )
            raise CSRAError(message, param="train_labels") from None
    else:
        split = train_split or entry.train_split
        if split is None:
            raise CSRAError(f"head='probe': {dataset} has no training split; pass train_split", param="train_split")
        if data.ann_file is not None or data.image_dir is not None:
            raise CSRAError(
                "head='probe' with ann_file / image_dir: the training split's files cannot be inferred; use the standard layout under data_dir",
                param="ann_file" if data.ann_file is not None else "image_dir",
            )
        classes = evaluated.classes if entry.shares_classes else None
        try:
            train = load_dataset(dataset, data_dir, data, split=split, classes=classes, labels=None)
        except CSRAError as exc:
            raise CSRAError(f"head='probe' needs a training split: {exc}", param=exc.param) from None
    if train.classes != evaluated.classes:
        raise CSRAError(
            f"head='probe': the training split's classes differ from the evaluated split's "
            f"({len(train.classes)} vs {len(evaluated.classes)}; same names, same order needed)"
        )

    def samples(images: LabelledImages) -> set[tuple[Path, object]]:
        boxes: list = images.boxes or [None] * len(images)
        return set(zip(images.paths, boxes, strict=True))

    shared = samples(train) & samples(evaluated)
    if shared:
        raise CSRAError(
            f"head='probe': {len(shared)} samples are in both the training split ({train.split}) and the evaluated "
            f"split ({evaluated.split}), e.g. {sorted(shared, key=str)[0][0]}; the probe must not see evaluated images"
        )
    return train


def load_selection_split(
    dataset: str,
    data_dir: str | Path,
    select_on: str | None,
    evaluated: LabelledImages,
    data: DataOptions | None = None,
) -> LabelledImages | None:
    """The split lam is chosen on for ``select_on=SPLIT`` (None for ``half`` or no held-out row):
    same loader options and classes as ``evaluated``, no image of it. Read before any model is built,
    so a split that does not exist is one line naming ``select_on``."""
    if select_on is None or select_on == "half":
        return None
    if select_on == evaluated.split:
        raise CSRAError(
            f"select_on {select_on}: is the evaluated split; choose lam on another split, or on half", param="select_on"
        )
    entry = dataset_entry(dataset)
    try:
        chosen = load_dataset(
            dataset, data_dir, data, split=select_on, **({"classes": evaluated.classes} if entry.shares_classes else {})
        )
    except CSRAError as exc:
        reason = (
            str(exc).split(": ", 1)[1].split("; check")[0] if str(exc).startswith(("--split", "split")) else str(exc)
        )
        raise CSRAError(
            f"select_on {select_on}: cannot read that split of {dataset} ({reason}); use half or a split that exists",
            param="select_on",
        ) from None
    if chosen.classes != evaluated.classes:
        raise CSRAError(
            f"select_on {select_on}: its classes differ from the evaluated split's; choose on a split of the same dataset",
            param="select_on",
        )
    shared = _samples(chosen) & _samples(evaluated)
    if shared:
        raise CSRAError(
            f"select_on {select_on}: {len(shared)} samples are also in the evaluated split ({evaluated.split}), e.g. {sorted(shared, key=str)[0][0]}; "
            "choose on a split with none of them, or on half",
            param="select_on",
        )
    chosen.dataset = evaluated.dataset
    return chosen


def files_read(**splits: LabelledImages | None) -> dict[str, list[Path]]:
    """The image and annotation files each loaded split reads, by the parameter that chose it."""
    return {param: [*images.paths, *images.sources] for param, images in splits.items() if images is not None}


def _samples(images: LabelledImages) -> set[tuple[Path, object]]:
    boxes: list = images.boxes or [None] * len(images)
    return set(zip(images.paths, boxes, strict=True))


def statistics_cached(memo_key: str, images: LabelledImages, options: ExtractOptions) -> bool:
    """Whether :func:`reuse_statistics` would find ``images``' statistics (nothing read, nothing printed)."""
    cache_dir = resolve_cache_dir(options.cache_dir)
    memo = read_memo(cache_dir, memo_key)
    return memo is not None and statistics_location(memo, images, options, cache_dir)[1].is_file()


def reuse_statistics(
    memo_key: str, images: LabelledImages, options: ExtractOptions, console: Console
) -> ClassStatistics | None:
    """Statistics straight from the cache when an earlier build's memo and its statistics file both
    exist (no model built); None otherwise."""
    cache_dir = resolve_cache_dir(options.cache_dir)
    memo = read_memo(cache_dir, memo_key)
    if memo is None:
        return None
    key, path = statistics_location(memo, images, options, cache_dir)
    if not path.is_file():
        return None
    remove_orphans(cache_dir)
    fingerprints = (memo.weights_fingerprint, memo.head_fingerprint)
    out = output_console(console, options.quiet)
    return read_cached_statistics(path, key, images, options.verify_images, fingerprints, out, model_built=False)


def build_adapter(
    model: str,
    images: LabelledImages,
    train: LabelledImages | None,
    *,
    checkpoint: str | Path | None,
    pretrained: bool,
    random_init: bool,
    probe_c: float,
    save_head: str | Path | None,
    options: ExtractOptions | None,
    console: Console,
) -> ModelAdapter:
    """The model with its own head, or with a probe fitted on ``train``."""
    adapter = _load_model_on_every_rank(
        model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_init=random_init,
        num_classes=len(images.classes) if random_init and train is None else None,
        img_size=options.img_size if options is not None else None,
    )
    if train is not None:
        adapter = fit_probe(adapter, train, c=probe_c, options=options, save_head_to=save_head, console=console)
    return adapter


def _load_model_on_every_rank(model: str, **kwargs: Any) -> ModelAdapter:
    """:func:`load_model`; under torchrun rank 0 first (hub weights are downloaded once, the
    others then read the local copy), and a random init is rank 0's, broadcast bit for bit."""

    ctx = current()
    if not ctx.active:
        return load_model(model, **kwargs)
    adapter: ModelAdapter | None = None
    if ctx.is_main:
        with stage("load model", ctx):
            adapter = load_model(model, **kwargs)
    else:
        check_status("load model", ctx)  # rank 0 has the weights in the local cache now
    with stage("load model", ctx):
        if adapter is None:
            adapter = load_model(model, **kwargs)
    if kwargs.get("random_init"):
        state = broadcast_state_dict(dict(adapter.state_dict()) if ctx.is_main else None, ctx)
        adapter.load_state_dict(state)
    return adapter


def real_labels_for(analysis: AnalysisOptions, images: LabelledImages, data: DataOptions | None) -> RealLabels | None:
    """The evaluated images' ReaL sets (None without ``analysis.real_labels``); checked against the images."""
    if analysis.real_labels is None:
        return None

    whole = data is None or (data.max_images is None and not data.skip_missing)
    return RealLabels.for_images(analysis.real_labels, images.ids, len(images.classes), whole_split=whole)


def analyse(
    console: Console,
    result: SweepResult,
    stats: ClassStatistics,
    grid: SweepOptions,
    analysis: AnalysisOptions,
    real: RealLabels | None,
    data_json: dict[str, Any],
) -> None:
    """The per-class table and figure, and the ReaL table and ``data_json["real_labels"]`` (docs/method.md §8-9)."""
    if analysis.per_class:
        print_per_class_table(console, result)
    if analysis.plot_classes is not None:
        title = (
            f"{stats.info.model} on {stats.info.dataset} {stats.info.split}: per-class Δ with 95 % bootstrap intervals"
        )
        plot_per_class(result, analysis.plot_classes, title=title)
        console.print(f"wrote {analysis.plot_classes}")
    if real is not None:
        if list(real.ids) != list(stats.ids):
            real = RealLabels.for_images(real.file, stats.ids, len(stats.classes))
        data_json["real_labels"] = real_metrics(stats, result, real, grid.lams, grid.temps, grid.heads)
        print_real_table(console, data_json["real_labels"])


def report_localisation(
    console: Console, stats: ClassStatistics, images: LabelledImages, data_json: dict[str, Any]
) -> None:
    """The pointing game under the table and in ``data_json["localisation"]`` when the images have boxes
    (VOC layouts, the demo's mosaics, COCO); the field is absent otherwise (docs/method.md, pointing game)."""

    try:
        section = statistics_pointing_game(stats, images)
    except CSRAError as exc:  # a transform whose grid can not be mapped back to the image
        console.print(f"[yellow]note:[/] no pointing game: {safe(exc)}", soft_wrap=True)
        section = None
    if section is not None:
        data_json["localisation"] = section
        console.print(f"{safe(summary_line(section))}; arg-max of s_k, the same for every λ", soft_wrap=True)


def sweep_config(
    source: ModelSource, dataset: str, data_dir: str | Path, parts: dict[str, Any], dataset_label: str | None
) -> dict[str, Any]:
    """What every rank of a torchrun launch must agree on (its hash is compared across ranks)."""
    from dataclasses import asdict, is_dataclass

    config: dict[str, Any] = {
        "version": __version__,
        "dataset": dataset,
        "data_dir": str(data_dir),
        "dataset_label": dataset_label,
    }
    for name, value in {"source": source, **parts}.items():  # flat keys: a refusal names options.img_size, not a dict
        fields = asdict(value) if is_dataclass(value) else {"": value}  # type: ignore[arg-type]
        config.update({f"{name}.{k}" if k else name: v for k, v in fields.items()})
    return config


@dataclass
class SweepData:
    """What a sweep reads before any model work: the evaluated images, the split lam is chosen on
    (``select_on=SPLIT``), the probe's training split, and the ReaL labels."""

    images: LabelledImages
    select_images: LabelledImages | None
    train: LabelledImages | None
    real: RealLabels | None


def load_sweep_data(
    dataset: str, data_dir: str | Path, data: DataOptions | None, grid: SweepOptions, probe: ProbeOptions | None,
    outputs: OutputOptions, analysis: AnalysisOptions, dataset_label: str | None, ctx: DistContext,
) -> SweepData:  # fmt: skip
    """Read every split the sweep needs and check that no output is one of their files; under
    torchrun every rank reads the whole lists (a shard is a range of them) and refuses more ranks than images."""
    train = None
    with stage("load data", ctx):
        images = load_dataset(dataset, data_dir, data)
        if dataset_label:  # a VOC-layout dataset that is not VOC (the demo's mosaics, say)
            images.dataset = dataset_label
        select_images = load_selection_split(dataset, data_dir, grid.select_on, images, data)  # before any model work
        real = real_labels_for(analysis, images, data)  # a bad real.json is one line before any model work
        if probe is not None:
            train = load_training_split(dataset, data_dir, probe.train_split, probe.train_labels, images, data)
            train.dataset = images.dataset
        check_outputs_not_read(
            sweep_output_paths(probe, outputs, analysis),
            files_read(data_dir=images, select_on=select_images, train_split=train),
        )
    if ctx.active:
        shard_for(ctx, len(images))  # more ranks than images: refused on every rank, before any work
        if train is not None:
            shard_for(ctx, len(train), "training images")
        if select_images is not None:
            shard_for(ctx, len(select_images), f"images of select_on {select_images.split}")
    return SweepData(images, select_images, train, real)


def sweep_memo_key(
    source: ModelSource, sweep_data: SweepData, probe: ProbeOptions | None, opts: ExtractOptions
) -> str | None:
    """The resolution memo's key (:mod:`csra_posthoc.cache.resolution`): None without the cache or
    for hub weights, which have no cheap identity."""
    if not opts.use_cache:
        return None
    random_init = source.random_init
    num_classes = len(sweep_data.images.classes) if random_init and probe is None else None
    stamp = weights_source_stamp(source.model, source.checkpoint, source.pretrained, random_init, num_classes)
    if stamp is None:
        return None
    train = sweep_data.train
    probe_key = (
        probe_settings(probe.probe_c, train.fingerprint(), opts) if probe is not None and train is not None else None
    )
    return resolution_key(source.model, stamp, "model" if probe is None else "probe", probe_key)


def cached_sweep_statistics(
    memo_key: str | None,
    sweep_data: SweepData,
    opts: ExtractOptions,
    save_head: str | Path | None,
    console: Console,
    ctx: DistContext,
) -> tuple[bool, ClassStatistics | None, ClassStatistics | None]:
    """Whether the evaluated (and ``select_on``) statistics come from the cache with no model built
    (the memo and every statistics file exist), and on rank 0 those statistics. Rank 0 decides,
    the others follow (they get the verdict, no statistics)."""
    found: tuple[ClassStatistics | None, ClassStatistics | None] = (None, None)

    def reuse() -> bool:
        nonlocal found
        if memo_key is None or opts.recompute or save_head is not None:
            return False
        images, select_images = sweep_data.images, sweep_data.select_images
        if select_images is not None and not statistics_cached(
            memo_key, select_images, opts
        ):  # no model is built only if both are cached
            return False
        stats = reuse_statistics(memo_key, images, opts, console)
        select_stats = (
            reuse_statistics(memo_key, select_images, opts, console)
            if stats is not None and select_images is not None
            else None
        )
        if select_images is None or select_stats is not None:
            found = (stats, select_stats)
        return found[0] is not None

    reused = main_decides_reuse(ctx, reuse, "read cache")
    return reused, *found


def extract_sweep_statistics(
    source: ModelSource,
    sweep_data: SweepData,
    probe: ProbeOptions | None,
    opts: ExtractOptions,
    memo_key: str | None,
    console: Console,
) -> tuple[ClassStatistics | None, ClassStatistics | None]:
    """Build the model (fit the probe), extract the evaluated and ``select_on`` statistics and write
    the resolution memo; (None, None) on the ranks but 0, whose shards are with rank 0 then."""
    images, select_images = sweep_data.images, sweep_data.select_images
    probe_c = probe.probe_c if probe is not None else ProbeOptions().probe_c
    save_head = probe.save_head if probe is not None else None
    adapter = build_adapter(
        source.model, images, sweep_data.train, checkpoint=source.checkpoint, pretrained=source.pretrained, random_init=source.random_init,
        probe_c=probe_c, save_head=save_head, options=opts, console=console,
    )  # fmt: skip
    stats = extract(adapter, images, opts, console=console)
    select_stats = extract(adapter, select_images, opts, console=console) if select_images is not None else None
    if stats is not None and memo_key is not None:
        write_memo(resolve_cache_dir(opts.cache_dir), memo_key, resolution_of(adapter))
    return stats, select_stats


def sweep_grid(
    stats: ClassStatistics, select_stats: ClassStatistics | None, grid: SweepOptions, console: Console, quiet: bool,
    images: LabelledImages | None = None,
) -> SweepResult:  # fmt: skip
    """The lam grid over the statistics, then the honesty checks (held-out lam, bootstrap; docs/uncertainty.md),
    with ``images`` that have boxes the size / clutter splits from the same resamples (docs/method.md §11),
    and the per-class F1 thresholds (multi-label; docs/method.md)."""
    fixed_lam = paper_fixed_lam(stats.info.model) if grid.fixed_lam is None else grid.fixed_lam
    bar = console_bar(output_console(console, quiet))
    with bar("sweep", grid_rows(grid.lams, grid.temps, grid.heads, fixed_lam), "row") as advance:
        result = sweep(
            stats,
            task=stats.info.task,
            fixed_lam=fixed_lam,
            lams=grid.lams,
            temps=grid.temps,
            heads=grid.heads,
            progress=advance,
        )
    splits, result.size_split_note = splits_for(stats, images) if images is not None else (None, None)
    assess(result, stats, grid, select_stats, bar=bar, splits=splits)
    result.thresholds = sweep_thresholds(result, stats, grid.seed)
    return result


def report_sweep(
    result: SweepResult, stats: ClassStatistics, sweep_data: SweepData, grid: SweepOptions, probe: ProbeOptions | None,
    outputs: OutputOptions, analysis: AnalysisOptions, opts: ExtractOptions, console: Console,
) -> dict[str, Any]:  # fmt: skip
    """Print the table and the analyses, write the JSON / figure / NPZ; returns the JSON dict."""
    train = sweep_data.train
    save_head = probe.save_head if probe is not None else None
    print_table(console, result, stats, list(grid.metrics))
    if train is not None and grid.select_on == train.split:
        console.print(
            f"[yellow]note:[/] λ chosen on {safe(train.split)}, the probe's training split: its scores are fitted, the held-out λ may favour it"
        )
    data_json = results_dict(result, stats, outputs.extra)
    report_localisation(console, stats, sweep_data.images, data_json)
    bar = console_bar(output_console(console, opts.quiet))
    report_splits(console, result.size_splits, result.size_split_note, data_json)
    data_json["head_file"] = (
        str(Path(save_head).resolve()) if save_head is not None else None
    )  # found by apply --from-results
    analyse(console, result, stats, grid, analysis, sweep_data.real, data_json)
    if outputs.plot is not None:
        title = f"{stats.info.model} on {stats.info.dataset} {stats.info.split} ({stats.num_images} images)"
        plot_lam_curve(result, outputs.plot, band=max_band(result, stats, grid, bar), title=title)
        console.print(f"wrote {safe(outputs.plot)}", soft_wrap=True)
    if outputs.out is not None:
        write_json(outputs.out, data_json)
        console.print(f"wrote {safe(outputs.out)}", soft_wrap=True)
    if outputs.save_scores_to is not None:
        save_scores(outputs.save_scores_to, result, stats)
        console.print(f"wrote {safe(outputs.save_scores_to)}", soft_wrap=True)
    return data_json


def run_sweep(
    source: ModelSource,
    dataset: str,
    data_dir: str | Path,
    *,
    data: DataOptions | None = None,
    options: ExtractOptions | None = None,
    sweep_options: SweepOptions | None = None,
    probe: ProbeOptions | None = None,
    outputs: OutputOptions | None = None,
    dataset_label: str | None = None,
    console: Console | None = None,
    analysis: AnalysisOptions | None = None,
) -> dict[str, Any]:
    """Check the arguments, load the data, then either reuse cached statistics (the memo of an
    earlier build says where they are) or build the model and extract; sweep, print the table,
    write JSON / NPZ; returns the JSON dict.

    ``probe`` None: the model's own head; else a linear probe fitted on the training split.
    ``sweep_options.fixed_lam`` None: the paper's fixed lam for the model (:func:`paper_fixed_lam`).
    ``analysis``: the per-class Δ table / figure and ImageNet-ReaL metrics (from the statistics, no new pass).

    Under torchrun (README: Scaling) every rank calls it with the same arguments (checked): each
    extracts its shard of the images, rank 0 alone decides cache reuse, writes the cache, sweeps,
    prints and writes the outputs and returns the JSON dict; the other ranks print nothing and
    return an empty dict.

    The steps: :func:`validate_sweep_args` -> :func:`load_sweep_data` -> :func:`cached_sweep_statistics`
    or :func:`extract_sweep_statistics` -> :func:`sweep_grid` -> :func:`report_sweep`.
    """
    ctx = current()
    console = console or report_console()
    if ctx.active:
        console = main_console(console)  # rank 0's table only
    opts = options or ExtractOptions()
    grid = sweep_options or SweepOptions()
    outputs = outputs or OutputOptions()
    analysis = analysis or AnalysisOptions()
    validate_sweep_args(
        opts, grid, probe, outputs, source=source, data=data, data_dir=data_dir, analysis=analysis
    )  # outputs: README, Outputs
    if analysis.real_labels is not None and dataset != "imagenet":
        raise CSRAError(
            f"real_labels: ReaL labels the ImageNet validation set; use dataset imagenet, not {dataset}",
            param="real_labels",
        )
    if ctx.active:
        parts = {"data": data, "options": opts, "sweep": grid, "probe": probe, "outputs": outputs}
        check_config_agreement(sweep_config(source, dataset, data_dir, parts, dataset_label), ctx)
    if source.pretrained:  # before the data is read: no network and no local copy is one line, not a minute of retries
        require_reachable_weights(source.model)
    sweep_data = load_sweep_data(dataset, data_dir, data, grid, probe, outputs, analysis, dataset_label, ctx)
    if source.random_init:
        console.print("[yellow]warning:[/] --random-init: the numbers below measure nothing but the code")
    memo_key = sweep_memo_key(source, sweep_data, probe, opts)
    reused, stats, select_stats = cached_sweep_statistics(
        memo_key, sweep_data, opts, probe.save_head if probe is not None else None, console, ctx
    )
    if not reused:
        stats, select_stats = extract_sweep_statistics(source, sweep_data, probe, opts, memo_key, console)
    if stats is None:  # another rank than 0: rank 0 reads the cache, or has this rank's shard now
        return {}
    result = sweep_grid(stats, select_stats, grid, console, opts.quiet, sweep_data.images)
    return report_sweep(result, stats, sweep_data, grid, probe, outputs, analysis, opts, console)
