"""The CSRA-patched model: the original backbone, run once, then :class:`CSRAHead` per location.

``patch(model, lam=0.2)`` returns an ``nn.Module`` that takes exactly the original model's input
(a normalised ``(B, 3, H, W)`` float tensor) and returns ``(B, C)`` scores. It holds the original
model's modules by reference (no backbone copy; only the classifier matrix is copied into the
head, in fp32). ``save_patched`` / ``load_patched`` keep it as safetensors plus a JSON config in
the file's metadata: weights only, no pickled code.

A patched model is for inference. It always computes in eval mode (batch-norm running statistics,
no dropout), whatever mode the caller's model is in: ``patch(model)`` leaves the caller's model
in the mode it was, a later ``model.train()`` does not change the patched scores, and
``patched.train()`` is accepted but keeps ``patched.training`` False (to fine-tune, train the
original model and patch it again). ``load_patched`` returns a model whose parameters do not
require grad (gradients with respect to the input still work); ``patch(model)`` leaves the
caller's parameters' ``requires_grad`` as they were.

A saved file is trusted only as far as it checks out: :meth:`~csra_posthoc.patched.config.PatchedConfig.from_json`
validates every config field (one line naming the file and the field otherwise), and :func:`load_patched` recomputes the
fingerprints of the model and head tensors it reads and refuses a file where either differs from
the config's ``weights_fingerprint`` / ``head_fingerprint`` (or where either is missing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import atomic_write
from ..data.transforms import TransformSpec, transform_description
from ..errors import CSRAError
from ..extraction.test_pool import TimmPoolHead
from ..heads.csra_head import CSRAHead
from ..heads.location import LocationHead
from ..models import ProbeHeadAdapter
from ..models.base import ModelAdapter, eval_mode
from ..models.checkpoint import state_dict_fingerprint
from ..models.hf_models import hf_label_names
from ..models.instance import adapter_for_module, architecture_kwargs, build_architecture
from ..models.probe_head import classifier_from_probe
from .config import PatchedConfig

CONFIG_KEY = "csra_posthoc_config"


def settings_fields(head: CSRAHead) -> dict[str, Any]:
    """The :class:`PatchedConfig` fields that describe a head's CSRA settings."""
    return {"variant": head.variant, "lam": head.lam, "heads": head.heads, "temperatures": tuple(head.temperatures)}


def _where(path: str | Path | None) -> str:
    return f"patched_file {path}" if path is not None else "patched config"


def verify_fingerprints(
    config: PatchedConfig,
    model_tensors: dict[str, torch.Tensor],
    head_tensors: dict[str, torch.Tensor],
    path: str | Path | None = None,
) -> None:
    """Refuse tensors whose fingerprints differ from the config's (the ones taken at ``patch`` time)."""
    for label, field, tensors in (
        ("model", "weights_fingerprint", model_tensors),
        ("head", "head_fingerprint", head_tensors),
    ):
        if state_dict_fingerprint(tensors) != getattr(config, field):
            raise CSRAError(
                f"{_where(path)}: its {label} tensors do not hash to the {field} in its config (damaged or edited file); export it again (CLI: apply --out)",
                param="patched_file",
            )


def verify_state_dict(config: PatchedConfig, state: dict[str, torch.Tensor], path: str | Path | None = None) -> None:
    """:func:`verify_fingerprints` for a whole ``PatchedModel`` state dict (``model.*`` and
    ``head.classifier.*``), as a TorchScript or ``torch.export`` file holds it."""
    unsaved = set(config.model_unsaved_buffers or [])  # TorchScript keeps them; the fingerprint never saw them
    model_t = {
        k[len("model.") :]: v for k, v in state.items() if k.startswith("model.") and k[len("model.") :] not in unsaved
    }
    head_t = {k[len("head.classifier.") :]: v for k, v in state.items() if k.startswith("head.classifier.")}
    verify_fingerprints(config, model_t, head_t, path)
    if config.location_head == "nonlinear":  # the model's own head modules: fingerprinted above
        return
    rows = head_t["weight"].shape[0] if "weight" in head_t else None
    if rows != config.num_classes:
        raise CSRAError(
            f"{_where(path)}: config field 'num_classes' says {config.num_classes}, its head has {rows} classes; export it again",
            param="patched_file",
        )


class PatchedModel(nn.Module):
    """``x -> CSRAHead(feature map of x)``; ``forward_with_baseline`` also returns the lam = 0 scores.

    The adapter (which knows how to get the pre-pool feature map of each family) is kept outside
    the module tree, so the state dict is ``model.*`` (the original model, untouched) plus
    ``head.classifier.*`` (the classifier applied per location).

    Inference only: it always computes in eval mode, whatever mode the shared modules are in (they
    are switched to eval for the forward pass and switched back, so the caller's model keeps its
    mode; do not run the original model in another thread meanwhile). ``train()`` / ``eval()`` are
    accepted and leave ``training`` False.
    """

    _adapter: ModelAdapter  # set with object.__setattr__: outside the module tree

    def __init__(self, adapter: ModelAdapter, head: CSRAHead, config: PatchedConfig) -> None:
        super().__init__()
        self.model = adapter.model
        self.head = head
        object.__setattr__(self, "_adapter", adapter)  # not a submodule: its modules are self.model's
        self.config = config
        self.train(False)

    def train(self, mode: bool = True) -> PatchedModel:
        """Inference only: ``training`` stays False, and the shared modules' own modes are not
        touched (the forward pass runs them in eval mode; see the class docstring)."""
        self.training = False
        self.head.train(False)
        return self

    @property
    def adapter(self) -> ModelAdapter:
        return self._adapter

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def classes(self) -> list[str] | None:
        return self.config.classes

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model):
            raw = self.adapter.forward_backbone(x)
            return self.adapter.feature_map(raw.float())

    @property
    def nonlinear(self) -> bool:
        """The model's head is non-linear after pooling (:mod:`csra_posthoc.models.nonlinear`): the
        baseline is its own logits, the attended term the whole head applied at each location."""
        return self.adapter.info.location_head == "nonlinear"

    def scores_and_baseline(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-location scores ``(B, C, K)`` and the lam = 0 scores ``(B, C)``: their mean, or the
        model's own logits for a non-linear head (one backbone pass)."""
        if not self.nonlinear:
            s = self.head.location_scores(self.feature_map(x))
            return s, s.mean(dim=-1)
        with eval_mode(self.model):
            raw = self.adapter.forward_backbone(x).float()
            return self.head.location_scores(self.adapter.feature_map(raw)), self.adapter.model_logits(raw).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nonlinear:
            return self.head.pool(*self.scores_and_baseline(x))
        return self.head(self.feature_map(x))

    def set_settings(
        self, lam: float | None = None, temperature: float | None = None, heads: int | None = None
    ) -> PatchedModel:
        """The same classifier with other CSRA settings; what is not given keeps its current value
        (lam alone keeps the variant)."""
        if temperature is None and heads is None:
            heads = self.head.heads
            temperature = self.head.temperatures[0] if heads is None else math.inf
        lam = self.head.lam if lam is None else lam
        self.head = CSRAHead(self.head.classifier, lam, math.inf if temperature is None else temperature, heads)
        for name, value in settings_fields(self.head).items():
            setattr(self.config, name, value)
        self.config.test_pool = None  # CSRA settings replace a test-pool head
        return self

    def check_unchanged(self) -> None:
        """Refuse to save or export a model whose tensors no longer hash to the config's fingerprints
        (the shared model was trained or edited after ``patch``): the file would carry a config
        describing other weights than its own."""
        for label, field, module in (
            ("weights", "weights_fingerprint", self.model),
            ("head", "head_fingerprint", self.head.classifier),
        ):
            if state_dict_fingerprint(module.state_dict()) != getattr(self.config, field):
                raise CSRAError(
                    f"patched model {self.config.model}: its {label} changed after patch() (no longer the {field} in its config); patch the model again before saving"
                )

    @torch.no_grad()
    def forward_with_baseline(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CSRA scores and the baseline (lam = 0: the average of per-location scores, or the model's
        logits for a non-linear head), one forward pass."""
        s, baseline = self.scores_and_baseline(x)
        return self.head.pool(s, baseline), baseline


def _checked_thresholds(thresholds: Sequence[float] | None, num_classes: int) -> list[float] | None:
    if thresholds is None:
        return None
    values = list(thresholds)
    if len(values) != num_classes or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in values
    ):
        raise CSRAError(f"thresholds: not {num_classes} finite numbers (one per class)")
    return [float(t) for t in values]


def patch(
    model: nn.Module | ModelAdapter,
    lam: float = 0.2,
    temperature: float = math.inf,
    heads: int | None = None,
    head: str | Path | LocationHead | tuple[LocationHead, dict] | None = None,
    *,
    name: str | None = None,
    classes: list[str] | None = None,
    preprocessing: TransformSpec | dict[str, Any] | None = None,
    img_size: int | None = None,
    thresholds: Sequence[float] | None = None,
    threshold_source: str | None = None,
    test_pool: dict[str, Any] | None = None,
) -> PatchedModel:
    """CSRA-patch a timm / torchvision classifier (or a :func:`csra_posthoc.load_model` adapter).

    ``score = mean_k s_k + lam * attended_k(s)``: ``temperature=inf`` attends with the max, a
    finite T with the softmax(T * s) average, ``heads`` H with the mean over the paper's H
    temperatures. With ``lam=0`` the output equals the model's own logits (to float rounding),
    except for class-token ViTs, where it equals the *patch-average* baseline (the mean of the
    per-patch logits), not the class-token logits. ``head`` swaps in a probe saved by
    ``sweep --save-head``. The returned module shares the original's modules (by reference: it
    does not change their mode or ``requires_grad``) and always computes in eval mode, whatever
    mode the original is later put in.
    ``preprocessing`` (a transform description) defaults to the model's own eval transform at
    ``img_size`` (default: the model's input size); exports and ``predict`` use it.
    ``thresholds``: per-class decision thresholds on the score scale (``score_c >= thresholds[c]``,
    e.g. a sweep's calibrated ones) and ``threshold_source`` (one line saying how they were chosen),
    stored in the config for ``predict --threshold calibrated``.
    ``test_pool`` (``{"train_size", "window": [h, w]}``): timm's test-time pooling instead of CSRA
    (:class:`csra_posthoc.extraction.test_pool.TimmPoolHead`; lam and the variant are then unused).
    """

    described = None
    if isinstance(model, ProbeHeadAdapter):  # fit_probe's result: its probe is the head unless another is given
        described = model.info.head if head is None else None
        model, head = model.base, (model.head if head is None else head)
    adapter = adapter_for_module(model, name)
    classifier, head_meta = (adapter.head, {}) if head is None else classifier_from_probe(adapter, head)
    csra = CSRAHead(classifier, lam=lam, temperature=temperature, heads=heads)
    settings = settings_fields(csra)
    if test_pool is not None:  # timm's test-time pooling row (docs/method.md §12)
        csra = TimmPoolHead(classifier, test_pool["window"], test_pool["train_size"])
    if classes is None:
        classes = (head_meta.get("probe") or {}).get("classes")
    if classes is None and head is None:  # a Hugging Face model names its classes in its config
        classes = hf_label_names(adapter.model)
    if classes is not None and len(classes) != csra.num_classes:
        raise CSRAError(f"classes: {len(classes)} names for a head with {csra.num_classes} classes", param="classes")
    if preprocessing is None:
        preprocessing = transform_description(adapter.data_config, img_size, single_label=True, choice="crop")
    probe = head_meta.get("probe")
    try:
        spec = TransformSpec.from_json(preprocessing)
    except ValueError as exc:
        raise CSRAError(f"preprocessing: not a transform description ({exc})") from None
    config = PatchedConfig(
        model=adapter.info.name,
        family=adapter.info.family,
        model_num_classes=adapter.num_classes,
        model_kwargs=architecture_kwargs(adapter.model),
        num_classes=csra.num_classes,
        classes=classes,
        weights=adapter.info.weights,
        weights_fingerprint=adapter.info.weights_fingerprint,
        head="probe" if head is not None else "model",
        head_description=(
            f"linear probe on {probe['dataset']} {probe['split']}" if probe else described or adapter.info.head
        ),
        head_fingerprint=state_dict_fingerprint(classifier.state_dict()),
        baseline_source=adapter.info.baseline_source,
        location_head=adapter.info.location_head,
        **settings,
        preprocessing=spec,
        data_config=asdict(adapter.data_config),
        input={"shape": ["batch", 3, spec.size, spec.size], "dtype": "float32", "normalised": True},
        output={
            "shape": ["batch", csra.num_classes],
            "meaning": "CSRA scores (logits scale): "
            + (
                "model logits + lam * attended(head at each location)"
                if adapter.info.location_head == "nonlinear"
                else "mean + lam * attended"
            ),
        },
        thresholds=_checked_thresholds(thresholds, csra.num_classes),
        threshold_source=None if thresholds is None else (threshold_source or "given to patch()"),
        # buffers outside the state dict (Swin's relative position index): not in weights_fingerprint, but a TorchScript file holds them
        model_unsaved_buffers=sorted(
            f"{prefix}.{name}".lstrip(".")
            for prefix, module in adapter.model.named_modules()
            for name in getattr(module, "_non_persistent_buffers_set", ())
        ),
    )
    if test_pool is not None:
        config.test_pool = csra.config()  # type: ignore[operator]
        config.output = {
            **(config.output or {}),
            "meaning": "test-time pooling scores (logits scale): 0.5 * (mean + max) of the window-averaged score map",
        }
    return PatchedModel(adapter, csra, config)


def save_patched(patched: PatchedModel, path: str | Path) -> None:
    """``.safetensors`` with the model's and the head's tensors and the config as metadata (atomic)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in patched.model.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in patched.head.classifier.state_dict().items()})
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    patched.check_unchanged()
    config = patched.config.to_json()
    if not patched.nonlinear:  # a non-linear head is rebuilt from the model's own modules, not from head_norm
        config["head_norm"] = {
            "pooled_norm": patched.head.classifier.pooled_norm,
            "eps": patched.head.classifier.norm_eps,
        }
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={CONFIG_KEY: json.dumps(config)}))


def read_config(path: str | Path) -> PatchedConfig:
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
    return PatchedConfig.parse(raw, path)


def load_patched(path: str | Path) -> PatchedModel:
    """Rebuild a model saved by :func:`save_patched` (or ``apply --out FILE.safetensors``), weights only.

    The config is checked field by field (:meth:`PatchedConfig.from_json`) and the model and head tensors
    read are fingerprinted and compared with the config's ``weights_fingerprint`` and
    ``head_fingerprint``: an edited or damaged file is refused, never run. The returned model is
    for inference: its parameters do not require grad.
    """
    from safetensors.torch import load_file

    path = Path(path)
    where = _where(path)
    config = read_config(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CSRAError(
            f"{where}: its tensors cannot be read ({type(exc).__name__}); the file is damaged: export it again",
            param="patched_file",
        ) from None
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    head_t = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    verify_fingerprints(config, model_sd, head_t, path)
    if config.location_head == "nonlinear":
        return _load_nonlinear(config, model_sd, path)
    num_classes = config.num_classes
    w = head_t.get("weight")
    shapes_ok = (
        set(head_t) == {"weight", "bias", "norm_weight", "norm_bias"}
        and w is not None
        and w.ndim == 2
        and tuple(head_t["bias"].shape) == (w.shape[0],)
        and tuple(head_t["norm_weight"].shape) == tuple(head_t["norm_bias"].shape) == (w.shape[1],)
    )
    if not shapes_ok:
        raise CSRAError(
            f"{where}: its head tensors are not a per-location classifier (weight, bias, norm_weight, norm_bias)",
            param="patched_file",
        )
    if w.shape[0] != num_classes:  # type: ignore[union-attr]
        raise CSRAError(
            f"{where}: config field 'num_classes' says {num_classes}, its head has {w.shape[0]} classes; export it again",  # type: ignore[union-attr]
            param="patched_file",
        )
    adapter = _rebuilt_adapter(config, model_sd, where)
    norm = config.head_norm
    assert norm is not None  # from_json(rebuild=True) checked it for a linear head
    classifier = LocationHead(
        head_t["weight"], head_t["bias"], head_t["norm_weight"], head_t["norm_bias"], norm["eps"], norm["pooled_norm"]
    )
    csra = _config_head(config, classifier)
    if config.test_pool is not None:
        csra = TimmPoolHead(classifier, config.test_pool["window"], config.test_pool["train_size"])
    return PatchedModel(adapter, csra, config)


def _config_head(config: PatchedConfig, classifier: Any) -> CSRAHead:
    return CSRAHead(
        classifier,
        config.lam,
        temperature=config.temperatures[0] if config.heads is None else math.inf,
        heads=config.heads,
    )


def _rebuilt_adapter(config: PatchedConfig, model_sd: dict[str, torch.Tensor], where: str) -> ModelAdapter:
    """The config's architecture with the file's model tensors, wrapped (and identity-checked) again."""

    model = build_architecture(config.model, config.model_num_classes, config.model_kwargs, where=where)
    try:
        missing, unexpected = model.load_state_dict(model_sd, strict=False)
    except RuntimeError:  # size mismatches
        missing, unexpected = ["(shape mismatch)"], []
    if missing or unexpected:
        raise CSRAError(
            f"{where}: its tensors do not fit {config.model} ({len(missing)} missing, {len(unexpected)} unexpected, or other shapes): config field 'model' or 'model_num_classes' does not match the tensors",
            param="patched_file",
        )
    model.requires_grad_(False)  # an inference model (its own parameters: nobody else holds them)
    return adapter_for_module(model.eval(), config.model, weights=config.weights or "patched")


def _load_nonlinear(config: PatchedConfig, model_sd: dict[str, torch.Tensor], path: Path) -> PatchedModel:
    """A non-linear head is the rebuilt model's own head modules: it must hash to the config's head_fingerprint."""
    where = _where(path)
    adapter = _rebuilt_adapter(config, model_sd, where)
    if (
        adapter.info.location_head != "nonlinear"
        or state_dict_fingerprint(adapter.head.state_dict()) != config.head_fingerprint
    ):
        raise CSRAError(
            f"{where}: its model's head is not the non-linear head its config describes (head_fingerprint); export it again",
            param="patched_file",
        )
    if adapter.num_classes != config.num_classes:
        raise CSRAError(
            f"{where}: config field 'num_classes' says {config.num_classes}, its head has {adapter.num_classes} classes; export it again",
            param="patched_file",
        )
    return PatchedModel(adapter, _config_head(config, adapter.head), config)
