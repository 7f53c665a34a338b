"""``csra-posthoc``: a thin Typer layer over :mod:`csra_posthoc.evaluation.run`.

Only typer, rich and the standard library are imported here: torch, timm and the rest load
inside the commands, so ``--help``, ``--version`` and usage errors answer at once.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..data.registry import DATASET_NAMES
from ..defaults import DEFAULT_BOOTSTRAP, DEFAULT_HEADS, DEFAULT_LAMS, DEFAULT_SELECT_ON, DEFAULT_TEMPS, LAUNCH_VARS
from ..errors import CSRAError
from ..options import (
    AnalysisOptions,
    CSRASettings,
    DataOptions,
    ExtractOptions,
    ModelSource,
    OutputOptions,
    ProbeOptions,
    SweepOptions,
    model_source,
)
from ..version import __version__
from .params import (
    BatchSizeOpt,
    CacheDirOpt,
    CheckpointOpt,
    ClassesFileOpt,
    ClassesOpt,
    DeviceOpt,
    FromResultsOpt,
    HeadFileOpt,
    HeadsOpt,
    ImgSizeOpt,
    LamOpt,
    ModelOpt,
    NoCacheOpt,
    OptionalModelOpt,
    PatchedFileOpt,
    PerClassOpt,
    PickOpt,
    PlotClassesOpt,
    PlotOpt,
    PretrainedOpt,
    RandomInitOpt,
    RecomputeOpt,
    SaveHeadOpt,
    SaveScoresOpt,
    TemperatureOpt,
    TransformOpt,
    WorkersOpt,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: boolean flags show as flags, not as '--no-cache <bool>'
    help="Training-free CSRA (avg + lam * max) on any pretrained classifier.",
)
err = Console(stderr=True)


def _word_metavars() -> None:
    """Typer labels list arguments with the Python type (``<list[Path]>``); show the word (``<path>``)."""
    from typer.core import TyperArgument

    python_label = getattr(TyperArgument, "display_type", None)  # typer >= 0.2x; older ones show no type
    if python_label is None or getattr(python_label, "_csra_words", False):
        return

    def display_type(self, ctx):
        label = python_label(self, ctx)
        if isinstance(label, str) and label.startswith("<list[") and label.endswith("]>"):
            return f"<{label[6:-2].lower()}>"
        return label

    display_type._csra_words = True  # type: ignore[attr-defined]
    TyperArgument.display_type = display_type  # type: ignore[method-assign]


_word_metavars()
INTERRUPTED = "[yellow]interrupted:[/] nothing was written to the cache or the outputs"


def _print_version(value: bool) -> None:
    if value:
        print(f"csra-posthoc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Training-free CSRA (avg + lam * max) on any pretrained classifier."""


def _csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _floats(flag: str, text: str, allow_empty: bool = False) -> list[float]:
    try:
        values = [
            math.inf if v.strip().lower() in ("inf", "infinity") else float(v) for v in text.split(",") if v.strip()
        ]
    except ValueError:
        raise CSRAError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0,0.1,0.2") from None
    if not values and not allow_empty:
        raise CSRAError(f"{flag}: give at least one value")
    return values


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CSRAError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4") from None


def _launched() -> bool:
    """Whether a launcher (torchrun) set the distributed variables; checked without importing torch."""
    return any(v in os.environ for v in LAUNCH_VARS)


def run_cli(fn, *args, distributed_device: str | None = None, **kwargs):
    """Turn user errors into one red line and exit code 2; Ctrl-C into exit 130 (nothing half-written).

    Under torchrun (README: Scaling) a command that supports it (``distributed_device``: its
    ``--device``) runs inside the process group; every rank exits non-zero on a failure, and
    only rank 0 prints an error that every rank shares (:func:`~csra_posthoc.extraction.distributed.should_print_error`).
    """
    main = True
    try:
        if not _launched():
            return fn(*args, **kwargs)
        from ..extraction.distributed import distributed, is_main_process, launch_env

        info = launch_env()
        main = is_main_process()
        if info is None or info["world_size"] == 1:
            return fn(*args, **kwargs)
        if distributed_device is None:
            raise CSRAError(
                f"this command runs in one process; under torchrun only sweep splits its work; launch it with python, not torchrun (WORLD_SIZE {info['world_size']})"
            )
        with distributed(distributed_device):
            return fn(*args, **kwargs)
    except CSRAError as exc:
        from ..text import safe
        from .messages import render

        if not _launched() or _should_print(exc):
            err.print(
                f"[bold red]error:[/] {safe(render(str(exc), exc.param, cli_flags()))}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if main:
            err.print(INTERRUPTED)
        raise typer.Exit(130) from None


def _should_print(exc: BaseException) -> bool:
    from ..extraction.distributed import should_print_error

    return should_print_error(exc)


@app.command("sweep", short_help="Sweep lam on a dataset and print a Table-1 row.")
def sweep_cmd(
    model: ModelOpt,
    dataset: str = typer.Option(..., "--dataset", "-d", help=" | ".join(DATASET_NAMES)),
    data_dir: Path = typer.Option(..., "--data-dir", help="dataset root in its standard layout (README: Datasets)"),
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_init: RandomInitOpt = False,
    head: str = typer.Option(
        "model", "--head", help="model: the model's own classifier | probe: fit a linear probe on the training split"
    ),
    train_split: Optional[str] = typer.Option(
        None, "--train-split", help="--head probe: split to fit on (VOC2007: trainval)"
    ),
    train_labels: Optional[Path] = typer.Option(
        None, "--train-labels", help="--head probe on --dataset csv: training CSV"
    ),
    probe_c: float = typer.Option(
        0.01, "--probe-c", help="--head probe: inverse L2 strength of the logistic regression"
    ),
    save_head: SaveHeadOpt = None,
    split: Optional[str] = typer.Option(
        None, "--split", help="split to evaluate (VOC2007: test; VOC2012, COCO, ImageNet: val; WIDER: test)"
    ),
    labels: Optional[Path] = typer.Option(
        None,
        "--labels",
        help="csv: CSV with header path,<class>,...; imagenet: flat val's LOC_val_solution.csv or devkit ground truth",
    ),
    ann_file: Optional[Path] = typer.Option(
        None, "--ann-file", help="COCO / WIDER annotation JSON outside the standard layout"
    ),
    image_dir: Optional[Path] = typer.Option(
        None, "--image-dir", help="COCO / WIDER image folder outside the standard layout"
    ),
    keep_empty: bool = typer.Option(False, "--keep-empty", help="COCO: keep images with no annotation (all negative)"),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="go on without annotated images missing on disk (counted in the report)"
    ),
    max_images: Optional[int] = typer.Option(
        None, "--max-images", help="seeded stratified subset of N samples, for quick runs"
    ),
    subset_seed: int = typer.Option(0, "--subset-seed", help="seed of the --max-images subset"),
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    difficult: str = typer.Option("ignore", "--difficult", help="VOC difficult objects: ignore | positive | negative"),
    img_size: ImgSizeOpt = None,
    transform: TransformOpt = "auto",
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    amp: bool = typer.Option(False, "--amp", help="mixed precision backbone (the head stays fp32); dtype: --amp-dtype"),
    amp_dtype: str = typer.Option(
        "auto",
        "--amp-dtype",
        help="autocast dtype: auto (fp16 on CUDA, bf16 on CPU) | fp16 | bf16 (fp16 / bf16 imply --amp)",
    ),
    keep_maps: bool = typer.Option(
        False, "--keep-maps", help="also cache full per-location scores in float16 (any --temps then works)"
    ),
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    recompute: RecomputeOpt = False,
    verify_images: bool = typer.Option(
        False, "--verify-images", help="cache key hashes image contents, not size + mtime (slower)"
    ),
    quiet: bool = typer.Option(
        False, "--quiet", help="no progress bars or extraction lines (the table and errors still print)"
    ),
    decode: str = typer.Option(
        "pil",
        "--decode",
        help="pil (exact) | draft: JPEG decoded at 1/2-1/8 scale when the input is at most half the image (faster, pixels differ slightly; own cache key)",
    ),
    backend: str = typer.Option(
        "eager",
        "--backend",
        help="eager | onnxruntime: the statistics pass on ONNX Runtime (CPU; pip install 'csra-posthoc[export]')",
    ),
    compile: bool = typer.Option(
        False, "--compile", help="torch.compile the backbone (start-up cost: pays on thousands of images)"
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        help="torch threads during extraction (default: the current count, capped at the cores other processes leave free when they keep the CPU busy; restored afterwards)",
    ),
    cache_dtype: str = typer.Option(
        "float32",
        "--cache-dtype",
        help="float32 | float16: statistics cached in half precision (half the file; own cache key)",
    ),
    test_pool: Optional[bool] = typer.Option(
        None,
        "--test-pool/--no-test-pool",
        help="timm's test-time pooling row beside CSRA's (default: on when --img-size exceeds the model's input size)",
    ),
    train_size: Optional[int] = typer.Option(
        None, "--train-size", help="test-time pooling's training size (default: the model's own input size)"
    ),
    lams: str = typer.Option(
        _csv(DEFAULT_LAMS), "--lams", help="comma-separated lam values of the sweep (0 is the baseline)"
    ),
    temps: str = typer.Option(
        _csv(DEFAULT_TEMPS), "--temps", help="softmax temperatures (inf = max); empty: no softmax variant"
    ),
    heads: str = typer.Option(
        _csv(DEFAULT_HEADS), "--heads", help="multi-head sets of the paper; empty: no multi-head variant"
    ),
    metrics: str = typer.Option("", "--metrics", help="extra columns, e.g. CF1,OF1,CF1_top3"),
    fixed_lam: Optional[float] = typer.Option(
        None, "--fixed-lam", help="lam of the 'fixed' row (default: the paper's, 0.02 for ResNets, 0.2 others)"
    ),
    select_on: str = typer.Option(
        DEFAULT_SELECT_ON,
        "--select-on",
        help="held-out row: lam chosen on half (of the images) or on another SPLIT; none: no row",
    ),
    bootstrap: int = typer.Option(
        DEFAULT_BOOTSTRAP, "--bootstrap", help="paired bootstrap resamples for the 95 % intervals of the deltas"
    ),
    no_bootstrap: bool = typer.Option(
        False, "--no-bootstrap", help="no intervals (a COCO-size bootstrap takes about 20 s on 2 cores)"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the --select-on half split and the bootstrap resamples"),
    plot: PlotOpt = None,
    out: Optional[Path] = typer.Option(None, "--out", help="results JSON"),
    save_scores_to: SaveScoresOpt = None,
    per_class: PerClassOpt = False,
    plot_classes: PlotClassesOpt = None,
    real_labels: Optional[Path] = typer.Option(
        None, "--real-labels", help="--dataset imagenet: ReaL labels (real.json): ReaL top-1/top-5 and multi-label mAP"
    ),
) -> None:
    """Sweep score = avg + lam * max (and softmax / multi-head variants) and print a Table-1 row."""

    def go() -> None:
        from ..data import read_classes
        from ..evaluation.run import run_sweep  # imported here (inside run_cli): torch takes seconds to import

        if head not in ("model", "probe"):
            raise CSRAError(f"--head {head}: choose model (the model's own classifier) or probe")
        if save_head is not None and head != "probe":
            raise CSRAError("--save-head needs --head probe (the model's own head is already in its weights)")
        _classes_file_not_written(classes_file, out=out, save_scores_to=save_scores_to, plot=plot, save_head=save_head)
        run_sweep(
            ModelSource(model=model, checkpoint=checkpoint, pretrained=pretrained, random_init=random_init),
            dataset,
            data_dir,
            data=DataOptions(
                split=split,
                labels=labels,
                classes=read_classes(classes, classes_file),
                difficult=difficult,  # type: ignore[arg-type]
                ann_file=ann_file,
                image_dir=image_dir,
                keep_empty=keep_empty,
                skip_missing=skip_missing,
                max_images=max_images,
                subset_seed=subset_seed,
            ),
            options=ExtractOptions(
                img_size=img_size,
                batch_size=batch_size,
                workers=workers,
                device=device,
                amp=amp or amp_dtype != "auto",
                amp_dtype=amp_dtype,  # type: ignore[arg-type]  # a str checked by ExtractOptions
                keep_maps=keep_maps,
                cache_dir=cache_dir,
                use_cache=not no_cache,
                recompute=recompute,
                transform=transform,  # type: ignore[arg-type]
                verify_images=verify_images,
                quiet=quiet,
                decode=decode,  # type: ignore[arg-type]
                backend=backend,  # type: ignore[arg-type]
                compile=compile,
                threads=threads,
                cache_dtype=cache_dtype,  # type: ignore[arg-type]
                test_pool=test_pool,
                train_size=train_size,
            ),
            sweep_options=SweepOptions(
                lams=tuple(_floats("--lams", lams)),
                temps=tuple(_floats("--temps", temps, allow_empty=True)),
                heads=tuple(_ints("--heads", heads)),
                metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
                fixed_lam=fixed_lam,
                select_on=None if select_on == "none" else select_on,
                bootstrap=None if no_bootstrap else bootstrap,
                seed=seed,
            ),
            probe=ProbeOptions(train_split=train_split, train_labels=train_labels, probe_c=probe_c, save_head=save_head)
            if head == "probe"
            else None,
            outputs=OutputOptions(out=out, save_scores_to=save_scores_to, plot=plot),
            analysis=AnalysisOptions(per_class=per_class, plot_classes=plot_classes, real_labels=real_labels),
        )

    run_cli(go, distributed_device=device)


@app.command("demo", short_help="Offline end-to-end demo on Fashion-MNIST mosaics.")
def demo_cmd(
    data_dir: Optional[Path] = typer.Option(
        None,
        "--data-dir",
        help="folder with Fashion-MNIST idx files (default: $FASHION_MNIST, else Debian's dataset-fashion-mnist, else sklearn digits)",
    ),
    num_train: int = typer.Option(800, "--num-train", help="trainval mosaics (the probe's training split)"),
    num_test: int = typer.Option(800, "--num-test", help="test mosaics (the evaluated split)"),
    img_size: int = typer.Option(224, "--img-size", help="mosaic canvas and model input size"),
    seed: int = typer.Option(
        0, "--seed", help="seed of the generated mosaics (the held-out split and the bootstrap use seed 0)"
    ),
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    recompute: RecomputeOpt = False,
    out: Optional[Path] = typer.Option(None, "--out", help="results JSON (same schema as sweep, plus 'demo')"),
    save_scores_to: SaveScoresOpt = None,
    plot: PlotOpt = None,
    per_class: PerClassOpt = False,
    plot_classes: PlotClassesOpt = None,
    save_head: SaveHeadOpt = None,
    save_examples: Optional[Path] = typer.Option(
        None, "--save-examples", help="folder: copy two test mosaics there (example-1.jpg, example-2.jpg)"
    ),
) -> None:
    """Offline end-to-end demo: real ImageNet EfficientNet-Lite0, probe head, Fashion-MNIST mosaics."""

    def go() -> None:
        from ..demo import run_demo  # imported here (inside run_cli): torch takes seconds to import

        run_demo(
            data_dir=data_dir,
            num_train=num_train,
            num_test=num_test,
            img_size=img_size,
            seed=seed,
            options=ExtractOptions(
                img_size=img_size,
                batch_size=batch_size,
                workers=workers,
                device=device,
                cache_dir=cache_dir,
                use_cache=not no_cache,
                recompute=recompute,
            ),
            out=out,
            save_scores_to=save_scores_to,
            plot=plot,
            analysis=AnalysisOptions(per_class=per_class, plot_classes=plot_classes),
            save_head=save_head,
            save_examples=save_examples,
        )

    run_cli(go)


def _classes_file_not_written(classes_file: Path | None, **outputs: Path | None) -> None:
    """--classes-file is read here, not by the library: the one output policy (README: Outputs) for it."""
    if classes_file is not None:
        from ..outputs import check_outputs

        check_outputs(outputs, {"classes_file": classes_file})


def _optional_float(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    values = _floats(flag, text)
    if len(values) != 1:
        raise CSRAError(f"{flag} {text!r}: give one number")
    return values[0]


@app.command("apply", short_help="Export the CSRA-patched model to a file.")
def apply_cmd(
    model: ModelOpt,
    out: Path = typer.Option(
        ..., "--out", "-o", help="FILE.safetensors | .pt2 (torch.export) | .ts (TorchScript) | .onnx"
    ),
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_init: RandomInitOpt = False,
    num_classes: Optional[int] = typer.Option(
        None,
        "--num-classes",
        help="--random-init: classes of the random head (default: --from-results' class count, else the model's)",
    ),
    head_file: HeadFileOpt = None,
    lam: LamOpt = None,
    temperature: TemperatureOpt = None,
    heads: HeadsOpt = None,
    from_results: FromResultsOpt = None,
    pick: PickOpt = "best",
    img_size: ImgSizeOpt = None,
    transform: TransformOpt = "auto",
    test_pool: bool = typer.Option(
        False, "--test-pool", help="timm's test-time pooling instead of CSRA (window: the feature map at --train-size)"
    ),
    train_size: Optional[int] = typer.Option(
        None,
        "--train-size",
        help="--test-pool: training size (default: --from-results' test-pool row, else the model's)",
    ),
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    force: bool = typer.Option(
        False, "--force", help="accepted, no longer needed: every command replaces an existing output (README: Outputs)"
    ),
) -> None:
    """Export the CSRA-patched model (same input as the original, (B, C) scores out)."""

    def go() -> None:
        from ..data import read_classes
        from ..patched.apply import apply_patch

        _classes_file_not_written(classes_file, out=out)
        apply_patch(
            ModelSource(model, checkpoint, pretrained, random_init, head_file=head_file, num_classes=num_classes),
            CSRASettings(
                _optional_float("--lam", lam),
                _optional_float("--temperature", temperature),
                heads,
                from_results=from_results,
                pick=pick,
            ),
            out,
            img_size=img_size,
            transform=transform,
            classes=read_classes(classes, classes_file),
            force=force,
            test_pool=test_pool,
            train_size=train_size,
        )

    run_cli(go)


@app.command("predict", short_help="Top classes per image from the patched model.")
def predict_cmd(
    images: list[Path] = typer.Argument(
        ..., metavar="IMAGE", help="image files and/or directories (searched recursively)"
    ),
    model: OptionalModelOpt = None,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_init: RandomInitOpt = False,
    patched_file: PatchedFileOpt = None,
    head_file: HeadFileOpt = None,
    from_results: FromResultsOpt = None,
    pick: PickOpt = "best",
    lam: LamOpt = None,
    temperature: TemperatureOpt = None,
    heads: HeadsOpt = None,
    img_size: ImgSizeOpt = None,
    transform: TransformOpt = "auto",
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    threshold: Optional[str] = typer.Option(
        None,
        "--threshold",
        help="calibrated (per-class, from --from-results / --patched; the default there) | a probability on sigmoid(score) "
        "(default 0.5; 0: the whole top-k); single-label heads: top-k by rank",
    ),
    top_k: int = typer.Option(
        5,
        "--top-k",
        help="classes listed per image, highest CSRA score first (multi-label heads: those passing --threshold)",
    ),
    compare: bool = typer.Option(False, "--compare", help="baseline (lam 0) and patched ranks side by side"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the predictions as JSON"),
    batch_size: BatchSizeOpt = 16,
    device: DeviceOpt = "auto",
) -> None:
    """Top classes per image from the CSRA-patched model (with --compare: beside the baseline's)."""

    def go() -> int:
        from ..data import read_classes
        from ..patched.predict import parse_threshold, run_predict

        _classes_file_not_written(classes_file, json_out=json_out)
        results = run_predict(
            images,
            model_source(model, checkpoint, pretrained, random_init, head_file=head_file, patched_file=patched_file),
            CSRASettings(
                _optional_float("--lam", lam),
                _optional_float("--temperature", temperature),
                heads,
                from_results=from_results,
                pick=pick,
            ),
            img_size=img_size,
            transform=transform,
            classes=read_classes(classes, classes_file),
            threshold=parse_threshold(threshold),
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            compare=compare,
            json_out=json_out,
        )
        from ..text import safe

        failed = [r for r in results if "error" in r]
        if failed:
            err.print(
                f"[bold red]error:[/] {len(failed)} of {len(results)} images could not be decoded (first: {safe(failed[0]['image'])}); the others were predicted",
                highlight=False,
                soft_wrap=True,
            )
        return 1 if failed else 0

    code = run_cli(go)
    if code:
        raise typer.Exit(code)


@app.command("compare", short_help="One table across sweep / demo results files.")
def compare_cmd(
    paths: list[Path] = typer.Argument(
        ..., metavar="RESULTS_JSON", help="results JSON files written by sweep --out / demo --out"
    ),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="write the table as CSV (plain numbers)"),
    markdown_out: Optional[Path] = typer.Option(None, "--markdown", help="write the table as Markdown"),
    latex_out: Optional[Path] = typer.Option(None, "--latex", help="write the table as a LaTeX booktabs tabular"),
) -> None:
    """One Table-1 style table across models and datasets (rows by dataset, then model)."""

    def go() -> None:
        from ..report.compare import run_compare

        run_compare(paths, csv_out=csv_out, markdown_out=markdown_out, latex_out=latex_out)

    run_cli(go)


@app.command("attention", short_help="Per-location class heat maps over one image.")
def attention_cmd(
    image: Path = typer.Argument(..., metavar="IMAGE", help="one image file"),
    out: Path = typer.Option(..., "--out", "-o", help="figure file: .png, .svg or .pdf (its folder must exist)"),
    model: OptionalModelOpt = None,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_init: RandomInitOpt = False,
    patched_file: PatchedFileOpt = None,
    head_file: HeadFileOpt = None,
    lam: LamOpt = None,
    temperature: TemperatureOpt = None,
    heads: HeadsOpt = None,
    img_size: ImgSizeOpt = None,
    transform: TransformOpt = "auto",
    classes: ClassesOpt = None,
    classes_file: ClassesFileOpt = None,
    top_k: int = typer.Option(3, "--top-k", help="classes shown (the highest CSRA scores)"),
    device: DeviceOpt = "auto",
    from_results: FromResultsOpt = None,
    pick: PickOpt = "best",
) -> None:
    """Per-location class scores of the top classes as heat maps over the image (the paper's Fig. 4)."""

    def go() -> None:
        from ..data import read_classes
        from ..patched.attention import run_attention

        _classes_file_not_written(classes_file, out=out)
        run_attention(
            image,
            out,
            model_source(model, checkpoint, pretrained, random_init, head_file=head_file, patched_file=patched_file),
            CSRASettings(
                _optional_float("--lam", lam),
                _optional_float("--temperature", temperature),
                heads,
                from_results=from_results,
                pick=pick,
            ),
            img_size=img_size,
            transform=transform,
            classes=read_classes(classes, classes_file),
            top_k=top_k,
            device=device,
        )

    run_cli(go)


@app.command("models", short_help="List architectures, or check which ones CSRA can patch.")
def models_cmd(
    pattern: Optional[str] = typer.Argument(
        None,
        metavar="PATTERN",
        help="fnmatch pattern as timm.list_models ('resnet*', '*vit*', 'torchvision:*'); default: all",
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="build each at random init (no download) and patch it: supported / patch average / non-linear head / refused",
    ),
    all_models: bool = typer.Option(
        False, "--all", help="--check every architecture (up to --max-params, default 30 M parameters)"
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="--check: write the checks as JSON"),
    max_params: Optional[int] = typer.Option(
        None, "--max-params", help="--check: skip models with more parameters (default 30000000 with --all, else none)"
    ),
    img_size: Optional[int] = typer.Option(
        None, "--img-size", help="--check: square input size (default: the model's own where fixed, else 96)"
    ),
) -> None:
    """List timm / torchvision architectures; with --check, patch each at random init and say whether CSRA supports it."""

    def go() -> None:
        from ..models.catalog import run_models

        run_models(
            pattern, check=check, check_all=all_models, json_out=json_out, max_params=max_params, img_size=img_size
        )

    run_cli(go)


@functools.cache
def cli_flags() -> dict[str, str]:
    """Python parameter -> flag, read off this app's commands (:func:`~csra_posthoc.cli.messages.command_flags`)
    plus :data:`~csra_posthoc.cli.messages.LIBRARY_FLAGS` (library parameters with no CLI option of that name)."""
    from .messages import LIBRARY_FLAGS, command_flags

    return {**command_flags(typer.main.get_command(app)), **LIBRARY_FLAGS}


def main() -> None:
    """Console entry point; Ctrl-C before a command body starts is one line and exit 130 too."""
    try:
        app()
    except KeyboardInterrupt:
        err.print(INTERRUPTED)
        sys.exit(130)


if __name__ == "__main__":
    main()
