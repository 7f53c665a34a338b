"""``csra-posthoc apply``: build the patched model from a weight source and settings, export it.

Settings come from the caller (``lam``, ``temperature`` / ``heads``) or from a sweep's results JSON
(``from_results`` + ``pick``), which is refused when it was measured on other weights, another
head or another class list: a lam tuned for one model says nothing about another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..data.registry import SINGLE_LABEL_DATASETS
from ..data.transforms import describe_transform, transform_description
from ..errors import CSRAError
from ..evaluation.validate import check_img_size, check_weight_source
from ..extraction.test_pool import train_grid, unsupported
from ..heads.csra_head import check_lam, resolve_temperatures
from ..heads.head_file import load_head
from ..heads.lookup import results_head_file
from ..models import load_model
from ..outputs import check_outputs
from ..report.compare import read_results_json
from ..report.tables import report_console
from ..text import safe
from .export import check_out_path, export_patched
from .model import patch

PICKS = {"best": "best", "fixed": "fixed", "best-variant": "best_variant"}
TEST_POOL_PICK = "test-pool"  # apply --pick test-pool: the results' test-pool row (timm's test-time pooling, docs/method.md §12)


@dataclass(frozen=True)
class CSRASettings:
    """One sweep row's settings: what a patched model needs to reproduce that row."""

    lam: float
    temperature: float = math.inf
    heads: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CSRASettings:
        kind = row.get("variant")
        if kind == "heads":
            return cls(float(row["lam"]), heads=int(row["heads"]))
        if kind == "softmax":
            return cls(float(row["lam"]), temperature=float(row["temperature"]))
        if kind == "max":
            return cls(float(row["lam"]))
        raise ValueError(f"unknown variant {kind!r}")

    @property
    def label(self) -> str:
        if self.heads is not None:
            return f"heads H={self.heads}, λ={self.lam:g}"
        return f"{'max' if math.isinf(self.temperature) else f'softmax T={self.temperature:g}'}, λ={self.lam:g}"


def read_results(path: str | Path) -> dict[str, Any]:
    """``from_results``: a sweep's results JSON with the rows apply picks from."""
    return read_results_json(path, required=("model", "best", "fixed", "classes"), param="from_results", label="from_results")


def pick_settings(results: dict[str, Any], pick: str, path: str | Path) -> CSRASettings:
    if pick not in PICKS:
        raise CSRAError(f"pick {pick}: choose {', '.join(PICKS)}", param="pick")

    row = results.get(PICKS[pick])
    where = f"from_results {path}: its {PICKS[pick]!r} row"
    if isinstance(row, dict) and "lam" in row:  # a bad value names the file and its row, not `lam` (the user gave none)
        value = row["lam"]
        try:
            lam = float(value)
        except (TypeError, ValueError):
            lam = math.nan
        if isinstance(value, bool) or not math.isfinite(lam) or lam < 0:
            raise CSRAError(f"{where} has lam {value!r}: it must be a finite number >= 0", param="from_results")
    try:
        settings = CSRASettings.from_row(row)  # type: ignore[arg-type]  # a missing row (None) is the TypeError below
    except (KeyError, TypeError, ValueError) as exc:
        raise CSRAError(f"{where} is unreadable ({exc})", param="from_results") from None
    try:
        resolve_temperatures(settings.temperature, settings.heads)
    except CSRAError as exc:
        raise CSRAError(f"{where} has an unusable variant ({exc})", param="from_results") from None
    return settings


def check_results_match(results: dict[str, Any], patched_config: dict[str, Any], path: str | Path) -> None:
    """Refuse settings measured on another model, weights, head or class list, saying which."""
    where = f"from_results {path}"
    if results["model"] != patched_config["model"]:
        raise CSRAError(f"{where}: measured on model {results['model']}, not {patched_config['model']}")
    measured = results.get("weights_fingerprint")
    if not measured:
        raise CSRAError(f"{where}: records no weights fingerprint (an older sweep); run the sweep again with this version")
    if measured != patched_config["weights_fingerprint"]:
        raise CSRAError(
            f"{where}: measured on other weights ({results.get('weights')}, fingerprint {measured[:12]}) than "
            f"{patched_config['weights']} (fingerprint {patched_config['weights_fingerprint'][:12]}); pass the sweep's weights"
        )
    head = results.get("head_fingerprint")
    if head and head != patched_config["head_fingerprint"]:
        hint = (
            "pass the probe it fitted as `head_file` (the sweep's `save_head`)" if patched_config["head"] == "model" else "pass the head file the sweep saved"
        )
        raise CSRAError(f"{where}: measured with another head ({results.get('head')}); {hint}")
    classes = results["classes"]
    mine = patched_config.get("classes")
    if len(classes) != patched_config["num_classes"] or (mine is not None and list(mine) != list(classes)):
        raise CSRAError(
            f"{where}: measured on {len(classes)} classes ({', '.join(classes[:3])}, ...), which is not this head's class list "
            f"({patched_config['num_classes']} classes)"
        )


def default_preprocessing(adapter, transform: str, img_size: int | None, head_meta: dict | None) -> dict[str, Any]:
    """The transform ``predict`` uses: ``crop`` (the model's eval transform) or ``square`` (the
    multi-label protocol); ``auto`` is square for a probe fitted on a multi-label dataset, else crop."""

    if transform == "auto":
        probe = (head_meta or {}).get("probe")
        transform = "square" if probe and probe.get("dataset") not in SINGLE_LABEL_DATASETS else "crop"
    return transform_description(adapter.data_config, img_size, single_label=False, choice=transform)  # type: ignore[arg-type]


def picked_thresholds(results: dict[str, Any], pick: str, path: str | Path) -> tuple[list[float] | None, str | None]:
    """The picked row's calibrated per-class thresholds (results ``thresholds.<row>.values``, raw score
    scale) and a one-line source for the patched config; ``(None, None)`` when the file has none
    (single-label tasks, older files)."""
    row = PICKS[pick]
    entry = (results.get("thresholds") or {}).get(row)
    if entry is None:
        return None, None
    values = entry.get("values") if isinstance(entry, dict) else None
    count = len(results["classes"]) if isinstance(results.get("classes"), list) else -1
    if (
        not isinstance(values, list)
        or len(values) != count
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    ):
        raise CSRAError(f"from_results {path}: its {row!r} thresholds are unreadable (not {count} finite numbers)", param="from_results")
    source = f"per-class F1 on {results.get('dataset')} {results.get('split')} ({results.get('num_images')} images), row {row} of {Path(path).name}"
    return [float(v) for v in values], " ".join(source.split())  # one line


def apply_patch(
    model: str,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_init: bool = False,
    head_file: str | Path | None = None,
    lam: float | None = None,
    temperature: float | None = None,
    heads: int | None = None,
    from_results: str | Path | None = None,
    pick: str = "best",
    img_size: int | None = None,
    transform: str = "auto",
    classes: list[str] | None = None,
    num_classes: int | None = None,
    force: bool = False,
    console: Console | None = None,
    test_pool: bool = False,
    train_size: int | None = None,
) -> dict[str, Any]:
    """Load ``model``, patch it with the given (or the results file's) settings, export to ``out``.

    ``test_pool`` (or ``pick="test-pool"`` with ``from_results``): timm's test-time pooling instead
    of CSRA, its window the feature map at ``train_size`` (default: the results' test-pool row's,
    else the model's own input size).

    Returns a summary (JSON-ready): the settings, the config written, and the export check.
    """

    console = console or report_console()
    # every flag is checked before any model is built
    check_weight_source(checkpoint, pretrained, random_init, model=model)
    check_out_path(out, force)
    check_outputs({"out": out}, {"checkpoint": checkpoint, "head_file": head_file, "from_results": from_results})  # README: Outputs
    test_pool = test_pool or (pick == TEST_POOL_PICK and from_results is not None)
    if pick not in PICKS and not (pick == TEST_POOL_PICK and from_results is not None):
        raise CSRAError(f"pick {pick}: choose {', '.join([*PICKS, TEST_POOL_PICK])}", param="pick")
    check_img_size(img_size)
    if train_size is not None and not test_pool:
        raise CSRAError(f"train_size {train_size}: sets the window of test-time pooling; add test_pool", param="train_size")
    check_img_size(train_size)
    if transform not in ("auto", "square", "crop"):
        raise CSRAError(f"transform {transform}: choose auto, square or crop", param="transform")
    results = None
    if test_pool:
        if lam is not None or temperature is not None or heads is not None:
            raise CSRAError("test_pool replaces CSRA's pooling: drop `lam`, `temperature` and `heads`", param="test_pool")
        settings = CSRASettings(0.0)
        if from_results is not None:
            results = read_results(from_results)
            train_size = train_size or results_train_size(results, from_results)
    elif from_results is not None:
        if lam is not None or temperature is not None or heads is not None:
            raise CSRAError("from_results sets lam / temperature / heads: drop `lam`, `temperature` and `heads`, or drop `from_results`", param="from_results")
        results = read_results(from_results)
        settings = pick_settings(results, pick, from_results)
    else:
        if lam is None:
            raise CSRAError("apply needs `lam` (or `from_results`, a sweep's results file)", param="lam")
        if temperature is not None and heads is not None:
            raise CSRAError("temperature and `heads`: give one of them (heads use the paper's temperature sets)", param="temperature")
        settings = CSRASettings(check_lam(lam), math.inf if temperature is None else float(temperature), heads)
        resolve_temperatures(settings.temperature, settings.heads)
    if results is not None and head_file is None:  # the probe the results name (issue 24): beside them or in the cache
        head_file = results_head_file(None, results, str(from_results), console)
        if head_file is not None:
            check_outputs({"out": out}, {"head_file": head_file, "from_results": from_results})
    head_meta: tuple[Any, dict[str, Any]] | None = None
    if head_file is not None:
        path = Path(head_file)
        if not path.is_file():
            raise CSRAError(f"head_file {path}: no such file", param="head_file")
        head_meta = load_head(path)

    swept_own_head = results is not None and not str(results.get("head", "")).startswith("linear probe")
    if random_init and num_classes is None and results is not None and swept_own_head:
        num_classes = len(results["classes"])  # as sweep --random-init built it: a head for the dataset's classes
    adapter = load_model(model, checkpoint=checkpoint, pretrained=pretrained, random_init=random_init, num_classes=num_classes)
    pool = pool_config(adapter, train_size) if test_pool else None
    if results is not None and img_size is None and transform == "auto" and results.get("transform"):
        preprocessing = results["transform"]
    else:
        preprocessing = default_preprocessing(adapter, transform, img_size, head_meta[1] if head_meta else None)
    patched = patch(adapter, settings.lam, settings.temperature, settings.heads, head=head_meta, classes=classes, preprocessing=preprocessing, test_pool=pool)
    if results is not None:
        assert from_results is not None  # results are read from it
        check_results_match(results, patched.config, from_results)
        if patched.config["classes"] is None:  # the dataset's names, in the head's order (just checked)
            patched.config["classes"] = list(results["classes"])
        # the picked row's calibrated thresholds (contract C2), once the head's classes are known to match
        values, source = picked_thresholds(results, pick, from_results) if not test_pool else (None, None)  # CSRA rows' thresholds only

        patched.config["thresholds"], patched.config["threshold_source"] = values, source
        patched.config["from_results"] = {
            "path": str(Path(from_results).resolve()),
            "pick": pick,
            "dataset": results.get("dataset"),
            "split": results.get("split"),
        }
    identity = lam_zero_difference(patched)
    patched.config["identity_max_abs_diff"] = identity
    report = export_patched(patched, out, force=force)
    label = f"test-pool, window {pool['window'][0]}x{pool['window'][1]} (train size {pool['train_size']})" if pool is not None else settings.label
    summary = {"settings": label, "identity_max_abs_diff": identity, "export": report.to_json(), "config": patched.config}
    print_apply_summary(console, patched, report, identity)
    return summary


def results_train_size(results: dict[str, Any], path: str | Path) -> int:
    """The training size of a results file's test-pool row (refused when it has none)."""
    rows = [r for r in results.get("rows") or [] if isinstance(r, dict) and r.get("variant") == "test-pool"]
    size = rows[0].get("train_size") if rows else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise CSRAError(f"from_results {path}: has no test-pool row (sweep with --test-pool, or an --img-size above the model's)", param="from_results")
    return size


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

    size = int(patched.config["preprocessing"]["size"])
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(next(patched.parameters()).device)
    adapter, classifier = patched.adapter, patched.head.classifier
    raw = adapter.forward_backbone(x).float()
    fmap = adapter.feature_map(raw)
    # non-linear head: lam 0 is the logits by construction; checked is the head on the pooled vector
    baseline = classifier.pooled(fmap) if getattr(classifier, "nonlinear", False) else classifier(fmap).mean(dim=-1)
    if patched.config["head"] == "model":
        own = adapter.model_logits(raw).float()
    else:
        own = F.linear(classifier.pooled_features(fmap), classifier.weight, classifier.bias)
    return float((baseline - own).abs().max())


def print_apply_summary(console: Console, patched, report, identity: float) -> None:
    from rich.table import Table

    cfg = patched.config
    table = Table(title=f"patched {safe(cfg['model'])} -> {safe(report.path)}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    temps = ", ".join(str(t) for t in cfg["temperatures"])
    if cfg.get("test_pool"):
        window = cfg["test_pool"]["window"]
        table.add_row(
            "score",
            f"0.5 * (mean + max) of the score map averaged over {window[0]}x{window[1]} windows (timm's test-time pooling, train size {cfg['test_pool']['train_size']})",
        )
    else:
        base = "model logits" if cfg.get("location_head") == "nonlinear" else "mean"
        table.add_row("score", f"{base} + {cfg['lam']:g} * {safe(cfg['variant'])} (temperatures {safe(temps)})")
    table.add_row("head", f"{safe(cfg['head_description'])} ({cfg['num_classes']} classes)")
    table.add_row("weights", f"{safe(cfg['weights'])} ({safe(cfg['weights_fingerprint'][:12])})")
    table.add_row("input", f"(B, 3, {cfg['preprocessing']['size']}, {cfg['preprocessing']['size']}) normalised float32")
    table.add_row("preprocessing", safe(describe_transform(cfg["preprocessing"])))
    table.add_row("format", f"{report.format} ({report.seconds:.1f} s)")
    table.add_row("check", f"reloaded file vs eager, batch 3: max abs diff {report.max_abs_diff:.2e}")
    if cfg["head"] != "model":
        source = "the probe on pooled features"
    elif cfg.get("location_head") == "nonlinear":
        source = "the model's logits (non-linear head: lam 0 is the logits; checked here: the head on the pooled features)"
    elif cfg["baseline_source"] == "model_logits":
        source = "the model's logits"
    else:
        source = "the model's class-token logits (the baseline is the patch average: not expected to match)"
    table.add_row("identity", f"lam 0 vs {source}: max abs diff {identity:.2e}")
    if cfg.get("from_results"):
        fr = cfg["from_results"]
        table.add_row("settings from", safe(f"{fr['path']} ({fr['pick']}, measured on {fr['dataset']} {fr['split']})"))
    if cfg.get("thresholds") is not None:
        table.add_row("thresholds", f"calibrated, {len(cfg['thresholds'])} classes: {safe(cfg.get('threshold_source') or '')}")
    console.print(table)
