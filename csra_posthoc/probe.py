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

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from .adapters import AdapterInfo, ModelAdapter, ProbeHeadAdapter
from .atomic import atomic_write
from .cache import cache_key, resolve_cache_dir
from .checkpoint import state_dict_fingerprint
from .data import LabelledImages
from .data.transforms import eval_transform
from .errors import CSRAError, first_line
from .extraction import backbone_batches, resolve_device, usable_cache_dir
from .location_head import LocationHead
from .options import ExtractOptions

PROBE_FORMAT = 1


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
def pooled_features(
    adapter: ModelAdapter, images: LabelledImages, options: ExtractOptions, console: Console | None = None
) -> torch.Tensor:
    """``(N, d)`` pooled head-input features; maps are never kept."""
    transform, desc = eval_transform(adapter.data_config, options.img_size, images.single_label, options.transform)  # type: ignore[arg-type]
    device = resolve_device(options.device)
    adapter = adapter.to(device).eval()
    out = []
    batches = backbone_batches(adapter, images, transform, desc["size"], options, device, console, f"probe features ({images.split})")
    for index, raw in batches:
        feats = adapter.head.pooled_features(adapter.feature_map(raw)).cpu()
        if not torch.isfinite(feats).all():
            raise CSRAError(
                f"model {adapter.info.name} produced NaN/inf features at input size {desc['size']} "
                f"(e.g. {images.paths[int(index[0])]}); check the weights or the input size, or drop --amp"
            )
        out.append(feats)
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


def save_head(head: LocationHead, path: str | Path, meta: dict) -> None:
    """A head as safetensors (weights + JSON metadata), loadable by :func:`load_head`."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    metadata = {"meta": json.dumps({**meta, "pooled_norm": head.pooled_norm, "norm_eps": head.norm_eps, "format": PROBE_FORMAT})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_head(path: str | Path) -> tuple[LocationHead, dict]:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["meta"])
            t = {k: fh.get_tensor(k) for k in fh.keys()}
        head = LocationHead(t["weight"], t["bias"], t["norm_weight"], t["norm_bias"], meta["norm_eps"], meta["pooled_norm"])
    except Exception as exc:
        raise CSRAError(f"head file {path} cannot be read ({type(exc).__name__}); delete it or re-fit the probe") from None
    return head, meta


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
    console = console or Console(stderr=True)
    opts = options or ExtractOptions()
    if c <= 0:
        raise CSRAError(f"--probe-c {c}: must be > 0")
    _, transform_desc = eval_transform(adapter.data_config, opts.img_size, train.single_label, opts.transform)  # type: ignore[arg-type]
    key = cache_key(
        {
            "kind": "probe",
            "format": PROBE_FORMAT,
            "weights": adapter.info.weights_fingerprint,
            "head_norm": state_dict_fingerprint({k: v for k, v in adapter.head.state_dict().items() if k.startswith("norm")}),
            "pooled_norm": adapter.head.pooled_norm,
            "transform": transform_desc,
            "train": train.fingerprint(content=opts.verify_images),
            "c": c,
            "amp": opts.amp,
        }
    )
    cache_dir = resolve_cache_dir(opts.cache_dir)
    path = cache_dir / f"probe-{key}.safetensors"
    reuse = opts.use_cache and not opts.recompute and path.is_file()  # reading needs no write access
    use_cache = reuse or (opts.use_cache and usable_cache_dir(cache_dir, console))
    if reuse:
        head, meta = load_head(path)
        info = ProbeInfo(**meta["probe"])
        console.print(f"[green]reused probe[/] {path}")
    else:
        if train.labels.shape[1] == 0 or not (train.labels == 1).any():
            raise CSRAError(f"probe: the training split {train.split} of {train.dataset} has no positive label")
        feats = pooled_features(adapter, train, opts, console)
        weight, bias, skipped = fit_linear_probe(feats, train.labels, c)
        head = adapter.head.with_linear(weight, bias)
        info = ProbeInfo(train.dataset, train.split, len(train), c, list(train.classes), [train.classes[k] for k in skipped])
        if use_cache:
            try:
                save_head(head, path, {"probe": asdict(info), "model": adapter.info.name})
            except OSError as exc:
                console.print(f"[yellow]warning:[/] could not write the probe cache file {path} ({first_line(exc, 120)}): going on without caching", soft_wrap=True)
    unfitted = ""
    if info.skipped_classes:
        unfitted = f"probe: no positive (or no negative) in {train.split} for {', '.join(info.skipped_classes)}: not fitted"
        console.print(f"[yellow]{unfitted}[/]")
    if save_head_to is not None:
        save_head(head, save_head_to, {"probe": asdict(info), "model": adapter.info.name})
        console.print(f"wrote head {save_head_to}")
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
