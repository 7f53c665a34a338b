"""The CSRA-patched model: the original backbone, run once, then :class:`CSRAHead` per location.

``patch(model, lam=0.2)`` returns an ``nn.Module`` that takes exactly the original model's input
(a normalised ``(B, 3, H, W)`` float tensor) and returns ``(B, C)`` scores. It holds the original
model's modules by reference (no backbone copy; only the classifier matrix is copied into the
head, in fp32). ``save_patched`` / ``load_patched`` keep it as safetensors plus a JSON config in
the file's metadata: weights only, no pickled code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .adapters.base import ModelAdapter
from .atomic import atomic_write
from .checkpoint import state_dict_fingerprint
from .csra_head import CSRAHead
from .errors import CSRAError
from .location_head import LocationHead

CONFIG_KEY = "csra_posthoc_config"
FORMAT = "csra-posthoc-patched"
FORMAT_VERSION = 1


def _json_float(t: float) -> float | str:
    return "inf" if math.isinf(t) else float(t)


def _from_json_float(t: float | str) -> float:
    return math.inf if t == "inf" else float(t)


def settings_config(head: CSRAHead) -> dict[str, Any]:
    """The config fields that describe a head's CSRA settings (inf written as "inf": JSON has none)."""
    return {
        "variant": head.variant,
        "lam": head.lam,
        "temperature": _json_float(head.temperatures[0]) if head.heads is None else None,
        "heads": head.heads,
        "temperatures": [_json_float(t) for t in head.temperatures],
    }


class PatchedModel(nn.Module):
    """``x -> CSRAHead(feature map of x)``; ``forward_with_baseline`` also returns the lam = 0 scores.

    The adapter (which knows how to get the pre-pool feature map of each family) is kept outside
    the module tree, so the state dict is ``model.*`` (the original model, untouched) plus
    ``head.classifier.*`` (the classifier applied per location).
    """

    _adapter: ModelAdapter  # set with object.__setattr__: outside the module tree

    def __init__(self, adapter: ModelAdapter, head: CSRAHead, config: dict[str, Any]) -> None:
        super().__init__()
        self.model = adapter.model
        self.head = head
        object.__setattr__(self, "_adapter", adapter)  # not a submodule: its modules are self.model's
        self.config = config

    @property
    def adapter(self) -> ModelAdapter:
        return self._adapter

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def classes(self) -> list[str] | None:
        return self.config.get("classes")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.adapter.forward_backbone(x)
        return self.adapter.feature_map(raw.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_map(x))

    def set_settings(self, lam: float | None = None, temperature: float | None = None, heads: int | None = None) -> PatchedModel:
        """The same classifier with other CSRA settings; what is not given keeps its current value
        (lam alone keeps the variant)."""
        if temperature is None and heads is None:
            heads = self.head.heads
            temperature = self.head.temperatures[0] if heads is None else math.inf
        lam = self.head.lam if lam is None else lam
        self.head = CSRAHead(self.head.classifier, lam, math.inf if temperature is None else temperature, heads)
        self.config.update(settings_config(self.head))
        return self

    @torch.no_grad()
    def forward_with_baseline(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CSRA scores and the baseline (lam = 0: the average of per-location scores), one forward pass."""
        s = self.head.location_scores(self.feature_map(x))
        return self.head.pool(s), s.mean(dim=-1)


def _classifier_from_probe(adapter: ModelAdapter, head: Any) -> tuple[LocationHead, dict]:
    """A probe saved by ``sweep --save-head`` (path, or ``(LocationHead, meta)``), checked against the model."""
    from .probe import load_head

    if isinstance(head, (str, Path)):
        path = Path(head)
        if not path.is_file():
            raise CSRAError(f"head_file {path}: no such file", param="head_file")
        classifier, meta = load_head(path)
        where = f"head_file {path}"
    elif isinstance(head, LocationHead):
        classifier, meta, where = head, {}, "head"
    else:
        classifier, meta = head
        where = "head"
    dim = adapter.head.weight.shape[1]
    if classifier.weight.shape[1] != dim:
        raise CSRAError(f"{where}: the head takes {classifier.weight.shape[1]} features but {adapter.info.name}'s feature map has {dim}")
    if classifier.pooled_norm != adapter.head.pooled_norm:
        raise CSRAError(f"{where}: fitted for a model {'with' if classifier.pooled_norm else 'without'} a pooled norm; {adapter.info.name} differs")
    fitted_on = meta.get("model")
    if fitted_on and fitted_on != adapter.info.name:
        raise CSRAError(f"{where}: fitted on {fitted_on}, not {adapter.info.name}; pass the head fitted with this `model`")
    return classifier, meta


def patch(
    model: nn.Module | ModelAdapter,
    lam: float = 0.2,
    temperature: float = math.inf,
    heads: int | None = None,
    head: str | Path | LocationHead | tuple[LocationHead, dict] | None = None,
    *,
    name: str | None = None,
    classes: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    img_size: int | None = None,
) -> PatchedModel:
    """CSRA-patch a timm / torchvision classifier (or a :func:`csra_posthoc.load_model` adapter).

    ``score = mean_k s_k + lam * attended_k(s)``: ``temperature=inf`` attends with the max, a
    finite T with the softmax(T * s) average, ``heads`` H with the mean over the paper's H
    temperatures. With ``lam=0`` the output equals the model's own logits (to float rounding),
    except for class-token ViTs, where it equals the *patch-average* baseline (the mean of the
    per-patch logits), not the class-token logits. ``head`` swaps in a probe saved by
    ``sweep --save-head``. The returned module shares the original's modules and is in eval mode.
    ``preprocessing`` (a transform description) defaults to the model's own eval transform at
    ``img_size`` (default: the model's input size); exports and ``predict`` use it.
    """
    from .adapters.instance import adapter_for_module, architecture_kwargs
    from .data.transforms import transform_description
    from .probe import ProbeHeadAdapter

    described = None
    if isinstance(model, ProbeHeadAdapter):  # fit_probe's result: its probe is the head unless another is given
        described = model.info.head if head is None else None
        model, head = model.base, (model.head if head is None else head)
    adapter = adapter_for_module(model, name)
    classifier, head_meta = (adapter.head, {}) if head is None else _classifier_from_probe(adapter, head)
    csra = CSRAHead(classifier, lam=lam, temperature=temperature, heads=heads)
    if classes is None:
        classes = (head_meta.get("probe") or {}).get("classes")
    if classes is not None and len(classes) != csra.num_classes:
        raise CSRAError(f"classes: {len(classes)} names for a head with {csra.num_classes} classes", param="classes")
    if preprocessing is None:
        preprocessing = transform_description(adapter.data_config, img_size, single_label=True, choice="crop")
    probe = head_meta.get("probe")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": adapter.info.name,
        "family": adapter.info.family,
        "model_num_classes": adapter.num_classes,
        "model_kwargs": architecture_kwargs(adapter.model),
        "num_classes": csra.num_classes,
        "classes": classes,
        "weights": adapter.info.weights,
        "weights_fingerprint": adapter.info.weights_fingerprint,
        "head": "probe" if head is not None else "model",
        "head_description": (f"linear probe on {probe['dataset']} {probe['split']}" if probe else described or adapter.info.head),
        "head_fingerprint": state_dict_fingerprint(classifier.state_dict()),
        "baseline_source": adapter.info.baseline_source,
        **settings_config(csra),
        "preprocessing": preprocessing,
        "data_config": asdict(adapter.data_config),
        "input": {"shape": ["batch", 3, preprocessing["size"], preprocessing["size"]], "dtype": "float32", "normalised": True},
        "output": {"shape": ["batch", csra.num_classes], "meaning": "CSRA scores (logits scale): mean + lam * attended"},
    }
    return PatchedModel(adapter, csra, config).eval()


def save_patched(patched: PatchedModel, path: str | Path) -> None:
    """``.safetensors`` with the model's and the head's tensors and the config as metadata (atomic)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in patched.model.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in patched.head.classifier.state_dict().items()})
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    config = {**patched.config, "head_norm": {"pooled_norm": patched.head.classifier.pooled_norm, "eps": patched.head.classifier.norm_eps}}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={CONFIG_KEY: json.dumps(config)}))


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of a saved patched ``.safetensors`` file (no tensors read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CSRAError(f"patched_file {path}: no such file", param="patched_file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(CONFIG_KEY)
    except Exception as exc:
        raise CSRAError(
            f"patched_file {path}: not a readable safetensors file ({type(exc).__name__}); write it with save_patched (CLI: apply --out FILE.safetensors)",
            param="patched_file",
        ) from None
    if raw is None:
        raise CSRAError(
            f"patched_file {path}: a safetensors file without a csra-posthoc config; write it with save_patched (CLI: apply --out FILE.safetensors)",
            param="patched_file",
        )
    config = json.loads(raw)
    if config.get("format") != FORMAT or int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise CSRAError(
            f"patched_file {path}: format {config.get('format')} v{config.get('format_version')} is not one this version reads", param="patched_file"
        )
    return config


def load_patched(path: str | Path) -> PatchedModel:
    """Rebuild a model saved by :func:`save_patched` (or ``apply --out FILE.safetensors``), weights only."""
    from safetensors.torch import load_file

    from .adapters.instance import adapter_for_module, build_architecture

    path = Path(path)
    config = read_config(path)
    tensors = load_file(str(path))
    model = build_architecture(config["model"], int(config["model_num_classes"]), config.get("model_kwargs"))
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(model_sd, strict=False)
    if missing or unexpected:
        raise CSRAError(
            f"patched_file {path}: its tensors do not fit {config['model']} ({len(missing)} missing, {len(unexpected)} unexpected)", param="patched_file"
        )
    adapter = adapter_for_module(model.eval(), config["model"], weights=config.get("weights", "patched"))
    head_t = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    norm = config.get("head_norm", {})
    classifier = LocationHead(
        head_t["weight"], head_t["bias"], head_t["norm_weight"], head_t["norm_bias"], norm.get("eps", 1e-6), norm.get("pooled_norm", False)
    )
    temps = [_from_json_float(t) for t in config["temperatures"]]
    csra = CSRAHead(classifier, config["lam"], temperature=temps[0] if config.get("heads") is None else math.inf, heads=config.get("heads"))
    expected = config.get("weights_fingerprint")
    if expected and adapter.info.weights_fingerprint != expected:
        raise CSRAError(f"patched_file {path}: its weights do not hash to the fingerprint in its config (damaged file?); export it again", param="patched_file")
    return PatchedModel(adapter, csra, config).eval()
