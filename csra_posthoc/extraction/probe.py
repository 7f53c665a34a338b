"""Linear-probe head: fit a multi-label linear classifier on pooled features of a training split.

The paper's setting in miniature: a classifier trained on global-average-pooled features, then
applied per location and scored with avg + lam * max. The probe sees exactly the vector the
model's own head would classify (``LocationHead.pooled_features``), so it drops into the same
per-location head; ConvNeXt-style pooled norms are kept.

Solver: scikit-learn ``LogisticRegression`` (L2, lbfgs), one binary problem per class, on
standardised features (mean 0, std 1 per dimension; the scaling is folded back into ``W, b``,
so the head stays linear in the features). ``C`` is the inverse L2 strength (``--probe-c``,
default 0.01: strong regularisation, which gave the best *baseline* mAP (lam = 0) on the demo's
Fashion-MNIST mosaics among C in {10, 1, 0.1, 0.01, 0.001}). Unknown labels (-1) are left out of
their class's problem.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ..cache.store import cache_key, cached, read_entry, resolve_cache_dir
from ..data import LabelledImages
from ..errors import CSRAError
from ..heads.head_file import PROBE_FORMAT, head_from, save_head
from ..heads.location import LocationHead
from ..log import output_console, say
from ..models import AdapterInfo, ModelAdapter, ProbeHeadAdapter
from ..models.checkpoint import state_dict_fingerprint
from ..options import ExtractOptions, amp_precision
from ..text import safe
from .batches import ForwardPass, backbone_batches, for_each_batch, forward_pass
from .distributed import (
    DistContext,
    broadcast_object,
    broadcast_state_dict,
    check_status,
    current,
    gather_tensors,
    main_decides_reuse,
    shard_for,
    stage,
)


@dataclass
class ProbeInfo:
    """What the report says about a probe, so no one mistakes it for a fine-tuned head."""

    dataset: str
    split: str
    num_images: int
    c: float
    classes: list[str]
    skipped_classes: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        return f"linear probe on {self.dataset} {self.split}, {self.num_images} images (C={self.c:g})"


@torch.no_grad()
def pooled_features(fp: ForwardPass, images: LabelledImages, ctx: DistContext | None = None) -> torch.Tensor:
    """``(N, d)`` pooled head-input features, from the same backbone loop as the statistics; maps are never kept.

    Under torchrun: this rank's shard of the images (``gather_tensors`` puts them back in order).
    """
    adapter, out = fp.adapter, []

    def one_batch(index: torch.Tensor, raw: torch.Tensor) -> None:
        feats = adapter.head.pooled_features(adapter.feature_map(raw)).cpu()
        if not torch.isfinite(feats).all():
            raise CSRAError(
                f"model {adapter.info.name} produced NaN/inf features at input size {fp.size} "
                f"(e.g. {images.paths[int(index[0])]}); check the weights or the input size, or run without amp (amp=False)",
                param="amp" if fp.options.amp else None,
            )
        out.append(feats)

    for_each_batch(backbone_batches(fp, images, f"probe features ({images.split})", "probe features", ctx), one_batch)
    return torch.cat(out)


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, c: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One L2 logistic regression per class on standardised features; returns ``W (C, d)``, ``b (C,)``
    in the original feature space and the indices of classes that could not be fitted (all one
    label in training): those get W = 0 and a bias predicting the one label seen."""
    from sklearn.linear_model import LogisticRegression

    x = features.double().numpy()
    mu, sigma = x.mean(0), x.std(0)
    sigma[sigma < 1e-6] = 1.0
    z = (x - mu) / sigma
    y_all = labels.numpy()
    weight = np.zeros((y_all.shape[1], x.shape[1]))
    bias = np.zeros(y_all.shape[1])
    skipped = []
    for k in range(y_all.shape[1]):
        keep = y_all[:, k] != -1
        y = y_all[keep, k]
        if y.size == 0 or y.min() == y.max():
            skipped.append(k)
            bias[k] = 8.0 if y.size and y[0] == 1 else -8.0
            continue
        clf = LogisticRegression(C=c, max_iter=2000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; the fit is still the best found
            clf.fit(z[keep], y)
        w = clf.coef_[0] / sigma
        weight[k] = w
        bias[k] = clf.intercept_[0] - float(w @ mu)
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float(), skipped


def _load_cached_head(path: Path) -> tuple[LocationHead, ProbeInfo]:
    tensors, metadata = read_entry(path, "probe cache file")  # refuses another format version
    try:
        head, meta = head_from(tensors, metadata)
        return head, ProbeInfo(**meta["probe"])
    except Exception as exc:
        raise CSRAError(
            f"probe cache file {path} is stale or damaged ({type(exc).__name__}); delete it or re-run with recompute=True",
            param="recompute",
        ) from None


def _fit_distributed(
    ctx: DistContext, path: Path, opts: ExtractOptions, base: LocationHead, features, reuse, fit, model: str
) -> tuple[LocationHead, ProbeInfo]:
    """The probe under torchrun: rank 0 decides reuse and reads / fits / writes the cache; every
    rank extracts its shard of the features when it is fitted; rank 0's head reaches every rank
    bit for bit (so the statistics' head fingerprint, and the cache key, are the single run's)."""
    hit = main_decides_reuse(ctx, lambda: opts.use_cache and not opts.recompute and path.is_file())
    fitted: tuple[LocationHead, ProbeInfo] | None = None
    if ctx.is_main:
        if hit:
            with stage("probe cache", ctx):
                fitted = reuse(path)
        else:
            outcome = cached(
                path, use_cache=opts.use_cache, recompute=True, load=reuse, compute=fit,
                save=lambda f, p: save_head(f[0], p, {"probe": asdict(f[1]), "model": model}),
                console=None, waiting_for="fitting the same probe", file_label="probe cache file",
            )  # fmt: skip
            fitted = outcome.value
    elif hit:
        check_status("probe cache", ctx)
    else:
        features()  # this rank's shard, gathered on rank 0
        check_status("probe fit", ctx)
    state = broadcast_state_dict(dict(fitted[0].state_dict()) if fitted is not None else None, ctx)
    meta = broadcast_object(asdict(fitted[1]) if fitted is not None else None, ctx)
    head = LocationHead(
        state["weight"], state["bias"], state["norm_weight"], state["norm_bias"], base.norm_eps, base.pooled_norm
    )
    return head, ProbeInfo(**meta)


def fit_probe(
    adapter: ModelAdapter,
    train: LabelledImages,
    *,
    c: float = 0.01,
    options: ExtractOptions | None = None,
    save_head_to: str | Path | None = None,
    console: Console | None = None,
) -> ProbeHeadAdapter:
    """Fit (or reuse from the cache) a probe on ``train`` and return an adapter that uses it."""
    opts = options or ExtractOptions()
    out = output_console(console, opts.quiet)
    if c <= 0:
        raise CSRAError(f"c {c}: the probe's inverse L2 strength must be > 0", param="c")
    if adapter.info.location_head == "nonlinear":  # models.nonlinear: the variant needs the model's own head
        raise CSRAError(
            f"head probe: {adapter.info.name}'s head is non-linear after pooling; a linear probe cannot replace it",
            param="head",
        )
    fp = forward_pass(adapter, train.single_label, opts, out)
    key = cache_key(
        {
            "kind": "probe",
            "format": PROBE_FORMAT,
            "weights": adapter.info.weights_fingerprint,
            "head_norm": state_dict_fingerprint(
                {k: v for k, v in adapter.head.state_dict().items() if k.startswith("norm")}
            ),
            "pooled_norm": adapter.head.pooled_norm,
            "transform": fp.desc,
            "train": train.fingerprint(content=opts.verify_images),
            "c": c,
            "amp": amp_precision(opts, fp.device.type) or False,
        }
    )

    if train.labels.shape[1] == 0 or not (train.labels == 1).any():  # before any rank starts the loop
        raise CSRAError(f"probe: the training split {train.split} of {train.dataset} has no positive label")
    ctx = current()

    def features() -> torch.Tensor | None:
        """The whole split's features on rank 0 (gathered in image order), None on the others."""
        mine = pooled_features(fp, train, ctx)
        if not ctx.active:
            return mine
        gathered = gather_tensors({"features": mine}, shard_for(ctx, len(train), align=opts.batch_size), ctx)
        return None if gathered is None else gathered["features"]

    def fit() -> tuple[LocationHead, ProbeInfo]:
        feats = features()
        with stage("probe fit", ctx):  # rank 0 fits; the others wait for its head (or its error)
            assert feats is not None
            weight, bias, skipped = fit_linear_probe(feats, train.labels, c)
        info = ProbeInfo(
            train.dataset, train.split, len(train), c, list(train.classes), [train.classes[k] for k in skipped]
        )
        return adapter.head.with_linear(weight, bias), info

    def reuse(path: Path) -> tuple[LocationHead, ProbeInfo]:
        fitted = _load_cached_head(path)
        say(out, f"[green]reused probe[/] {safe(path)}")
        return fitted

    path = resolve_cache_dir(opts.cache_dir) / f"probe-{key}.safetensors"
    if ctx.active:
        head, info = _fit_distributed(ctx, path, opts, adapter.head, features, reuse, fit, adapter.info.name)
    else:
        outcome = cached(
            path,
            use_cache=opts.use_cache,
            recompute=opts.recompute,
            load=reuse,
            compute=fit,
            save=lambda fitted, path: save_head(
                fitted[0], path, {"probe": asdict(fitted[1]), "model": adapter.info.name}
            ),
            console=out,
            waiting_for="fitting the same probe",
            file_label="probe cache file",
        )
        head, info = outcome.value
    unfitted = ""
    if info.skipped_classes:
        unfitted = (
            f"probe: no positive (or no negative) in {train.split} for {', '.join(info.skipped_classes)}: not fitted"
        )
        say(out, f"[yellow]{safe(unfitted)}[/]", logging.WARNING)
    if save_head_to is not None and ctx.is_main:  # every rank holds the same head: rank 0 writes it
        save_head(head, save_head_to, {"probe": asdict(info), "model": adapter.info.name})
        say(out, f"wrote head {safe(save_head_to)}")
    base = adapter.info
    probe_info = AdapterInfo(
        name=base.name,
        family=base.family,
        baseline_source="model_logits",
        weights=base.weights,
        weights_fingerprint=base.weights_fingerprint,
        notes=[*base.notes, unfitted] if unfitted else base.notes,
        head=info.description,
    )
    return ProbeHeadAdapter(adapter, head, probe_info)
