"""``csra-posthoc apply``: build the patched model from a weight source and settings, export it.

Settings (:class:`~csra_posthoc.options.CSRASettings`) come from the caller (``lam``, ``temperature`` /
``heads``) or from a sweep's results JSON (``from_results`` + ``pick``), which is refused when it was measured on other weights, another
head or another class list: a lam tuned for one model says nothing about another.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..data.registry import SINGLE_LABEL_DATASETS
from ..data.transforms import TransformSpec, transform_spec
from ..defaults import TRANSFORM_CHOICES
from ..errors import CSRAError
from ..evaluation.validate import check_img_size
from ..extraction.test_pool import train_grid, unsupported
from ..heads.head_file import load_head
from ..heads.lookup import results_head_file
from ..models import load_model
from ..models.base import probe_input
from ..options import PICKS, TEST_POOL_PICK, CSRASettings, ModelSource
from ..outputs import check_outputs
from ..report.results_file import ResultsFile
from ..report.tables import report_console
from ..text import safe
from .config import PatchedConfig
from .export import check_out_path, export_patched
from .model import patch
from .settings import resolve_settings


def read_results(path: str | Path) -> ResultsFile:
    """``from_results``: a sweep's results JSON with the rows apply / predict / attention pick from."""
    return ResultsFile.read(
        path, required=("model", "best", "fixed", "classes"), param="from_results", label="from_results"
    )


def check_results_match(results: ResultsFile, config: PatchedConfig) -> None:
    """Refuse settings measured on another model, weights, head or class list, saying which."""
    where = results.where
    if results.model != config.model:
        raise CSRAError(f"{where}: measured on model {results.model}, not {config.model}")
    measured = results.weights_fingerprint
    if not measured:
        raise CSRAError(
            f"{where}: records no weights fingerprint (an older sweep); run the sweep again with this version"
        )
    if measured != config.weights_fingerprint:
        raise CSRAError(
            f"{where}: measured on other weights ({results.weights}, fingerprint {measured[:12]}) than "
            f"{config.weights} (fingerprint {config.weights_fingerprint[:12]}); pass the sweep's weights"
        )
    head = results.head_fingerprint
    if head and head != config.head_fingerprint:
        hint = (
            "pass the probe it fitted as `head_file` (the sweep's `save_head`)"
            if config.head == "model"
            else "pass the head file the sweep saved"
        )
        raise CSRAError(f"{where}: measured with another head ({results.head}); {hint}")
    classes = results.classes or []
    mine = config.classes
    if len(classes) != config.num_classes or (mine is not None and list(mine) != list(classes)):
        raise CSRAError(
            f"{where}: measured on {len(classes)} classes ({', '.join(classes[:3])}, ...), which is not this head's class list ({config.num_classes} classes)"
        )


def default_preprocessing(adapter, transform: str, img_size: int | None, head_meta: dict | None) -> TransformSpec:
    """The transform ``predict`` uses: ``crop`` (the model's eval transform) or ``square`` (the
    multi-label protocol); ``auto`` is square for a probe fitted on a multi-label dataset, else crop."""

    if transform == "auto":
        probe = (head_meta or {}).get("probe")
        transform = "square" if probe and probe.get("dataset") not in SINGLE_LABEL_DATASETS else "crop"
    return transform_spec(adapter.data_config, img_size, single_label=False, choice=transform)  # type: ignore[arg-type]


def apply_patch(
    source: ModelSource,
    settings: CSRASettings,
    out: str | Path,
    *,
    img_size: int | None = None,
    transform: str = "auto",
    classes: list[str] | None = None,
    force: bool = False,
    console: Console | None = None,
    test_pool: bool = False,
    train_size: int | None = None,
) -> dict[str, Any]:
    """Load ``source``'s model, patch it with ``settings`` (given, or a results file's row), export to ``out``.

    ``settings.lam`` is required unless ``settings.from_results`` is given. ``test_pool`` (or
    ``settings.pick="test-pool"`` with ``from_results``): timm's test-time pooling instead of CSRA,
    its window the feature map at ``train_size`` (default: the results' test-pool row's, else the
    model's own input size). Returns a summary (JSON-ready): the settings, the config written, and
    the export check.
    """

    console = console or report_console()
    # every parameter is checked before any model is built (the option objects checked themselves)
    check_out_path(out, force)
    from_results = settings.from_results
    check_outputs(
        {"out": out}, {"checkpoint": source.checkpoint, "head_file": source.head_file, "from_results": from_results}
    )  # README: Outputs
    check_img_size(img_size)
    check_transform_choice(transform)
    test_pool = test_pool or (settings.pick == TEST_POOL_PICK and from_results is not None)
    if settings.pick == TEST_POOL_PICK and from_results is None:
        raise CSRAError(
            f"pick {settings.pick}: choose {', '.join(PICKS)} (test-pool picks a row of `from_results`)", param="pick"
        )
    if train_size is not None and not test_pool:
        raise CSRAError(
            f"train_size {train_size}: sets the window of test-time pooling; add test_pool", param="train_size"
        )
    check_img_size(train_size)
    results = read_results(from_results) if from_results is not None else None
    if test_pool:
        if settings.given:
            raise CSRAError(
                "test_pool replaces CSRA's pooling: drop `lam`, `temperature` and `heads`", param="test_pool"
            )
        resolved = CSRASettings(0.0, math.inf)
        if results is not None:
            train_size = train_size or results.train_size()
    else:
        resolved = resolve_settings(settings, results=results)
    head_file = source.head_file
    if results is not None and head_file is None:  # the probe the results name (issue 24): beside them or in the cache
        head_file = results_head_file(None, results, str(from_results), console)
        if head_file is not None:
            check_outputs({"out": out}, {"head_file": head_file, "from_results": from_results})
    head_meta: tuple[Any, dict[str, Any]] | None = load_head(Path(head_file)) if head_file is not None else None

    num_classes = source.num_classes
    swept_own_head = results is not None and not str(results.head or "").startswith("linear probe")
    if source.random_init and num_classes is None and results is not None and swept_own_head:
        num_classes = len(results.classes or [])  # as sweep --random-init built it: a head for the dataset's classes
    adapter = load_model(
        source.model,
        checkpoint=source.checkpoint,
        pretrained=source.pretrained,
        random_init=source.random_init,
        num_classes=num_classes,
        img_size=img_size
        or (results.transform.size if results is not None and results.transform is not None else None),
    )
    pool = pool_config(adapter, train_size) if test_pool else None
    preprocessing: TransformSpec
    if results is not None and img_size is None and transform == "auto" and results.transform is not None:
        preprocessing = results.transform
    else:
        preprocessing = default_preprocessing(adapter, transform, img_size, head_meta[1] if head_meta else None)
    assert resolved.lam is not None  # resolved
    patched = patch(
        adapter,
        resolved.lam,
        resolved.pool_temperature,
        resolved.heads,
        head=head_meta,
        classes=classes,
        preprocessing=preprocessing,
        test_pool=pool,
    )
    if results is not None:
        assert from_results is not None  # results are read from it
        check_results_match(results, patched.config)
        if patched.config.classes is None:  # the dataset's names, in the head's order (just checked)
            patched.config.classes = list(results.classes or [])
        # the picked row's calibrated thresholds (contract C2), once the head's classes are known to match
        found = results.thresholds(settings.pick) if not test_pool else None  # CSRA rows' thresholds only
        patched.config.thresholds, patched.config.threshold_source = (
            (found[0], found[2]) if found is not None else (None, None)
        )
        patched.config.from_results = {
            "path": str(Path(from_results).resolve()),
            "pick": settings.pick,
            "dataset": results.dataset,
            "split": results.split,
        }
    identity = lam_zero_difference(patched)
    patched.config.identity_max_abs_diff = identity
    report = export_patched(patched, out, force=force)
    label = (
        f"test-pool, window {pool['window'][0]}x{pool['window'][1]} (train size {pool['train_size']})"
        if pool is not None
        else resolved.label
    )
    summary = {
        "settings": label,
        "identity_max_abs_diff": identity,
        "export": report.to_json(),
        "config": patched.config.to_json(),
    }
    print_apply_summary(console, patched, report, identity)
    return summary


def check_transform_choice(transform: str) -> None:
    """``transform``: one of :data:`~csra_posthoc.defaults.TRANSFORM_CHOICES`."""
    if transform not in TRANSFORM_CHOICES:
        raise CSRAError(
            f"transform {transform}: choose {', '.join(TRANSFORM_CHOICES[:-1])} or {TRANSFORM_CHOICES[-1]}",
            param="transform",
        )


def pool_config(adapter, train_size: int | None) -> dict[str, Any]:
    """``{"train_size", "window"}`` of timm's test-time pooling for ``adapter`` (refused for heads where it does not apply)."""

    reason = unsupported(adapter.head, adapter.info.baseline_source)
    if reason is not None:
        raise CSRAError(f"test_pool: {adapter.info.name}: {reason}", param="test_pool")
    size = int(train_size or adapter.data_config.input_size)
    return {"train_size": size, "window": list(train_grid(adapter.eval(), size, torch.device("cpu")))}


@torch.no_grad()
def lam_zero_difference(patched) -> float:
    """max |patched at lam 0 - the head's own pooled logits| on a random batch (the identity check):
    the model's logits for its own head, ``W · pooled + b`` for a probe."""
    import torch.nn.functional as F

    size = patched.config.preprocessing.size
    x = probe_input(patched, size)
    adapter, classifier = patched.adapter, patched.head.classifier
    raw = adapter.forward_backbone(x).float()
    fmap = adapter.feature_map(raw)
    # non-linear head: lam 0 is the logits by construction; checked is the head on the pooled vector
    baseline = classifier.pooled(fmap) if getattr(classifier, "nonlinear", False) else classifier(fmap).mean(dim=-1)
    if patched.config.head == "model":
        own = adapter.model_logits(raw).float()
    else:
        own = F.linear(classifier.pooled_features(fmap), classifier.weight, classifier.bias)
    return float((baseline - own).abs().max())


def print_apply_summary(console: Console, patched, report, identity: float) -> None:
    from rich.table import Table

    cfg = patched.config
    size = cfg.preprocessing.size
    table = Table(title=f"patched {safe(cfg.model)} -> {safe(report.path)}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    temps = ", ".join(str(t) for t in cfg.temperatures)
    if cfg.test_pool:
        window = cfg.test_pool["window"]
        table.add_row(
            "score",
            f"0.5 * (mean + max) of the score map averaged over {window[0]}x{window[1]} windows (timm's test-time pooling, train size {cfg.test_pool['train_size']})",
        )
    else:
        base = "model logits" if cfg.location_head == "nonlinear" else "mean"
        table.add_row("score", f"{base} + {cfg.lam:g} * {safe(cfg.variant)} (temperatures {safe(temps)})")
    table.add_row("head", f"{safe(cfg.head_description)} ({cfg.num_classes} classes)")
    table.add_row("weights", f"{safe(cfg.weights)} ({safe(cfg.weights_fingerprint[:12])})")
    table.add_row("input", f"(B, 3, {size}, {size}) normalised float32")
    table.add_row("preprocessing", safe(cfg.preprocessing.describe()))
    table.add_row("format", f"{report.format} ({report.seconds:.1f} s)")
    table.add_row("check", f"reloaded file vs eager, batch 3: max abs diff {report.max_abs_diff:.2e}")
    if cfg.head != "model":
        source = "the probe on pooled features"
    elif cfg.location_head == "nonlinear":
        source = (
            "the model's logits (non-linear head: lam 0 is the logits; checked here: the head on the pooled features)"
        )
    elif cfg.baseline_source == "model_logits":
        source = "the model's logits"
    else:
        source = "the model's class-token logits (the baseline is the patch average: not expected to match)"
    table.add_row("identity", f"lam 0 vs {source}: max abs diff {identity:.2e}")
    if cfg.from_results:
        fr = cfg.from_results
        table.add_row("settings from", safe(f"{fr['path']} ({fr['pick']}, measured on {fr['dataset']} {fr['split']})"))
    if cfg.thresholds is not None:
        table.add_row("thresholds", f"calibrated, {len(cfg.thresholds)} classes: {safe(cfg.threshold_source or '')}")
    console.print(table)
