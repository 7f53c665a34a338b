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

A saved file is trusted only as far as it checks out: :func:`check_config` validates every config
field (one line naming the file and the field otherwise), and :func:`load_patched` recomputes the
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
from ..data.transforms import INTERPOLATIONS, transform_description
from ..errors import CSRAError
from ..extraction.test_pool import TimmPoolHead
from ..heads.csra_head import CSRAHead
from ..heads.location import LocationHead
from ..heads.scoring import head_temperatures
from ..models import ProbeHeadAdapter
from ..models.base import ModelAdapter
from ..models.checkpoint import state_dict_fingerprint
from ..models.hf_models import hf_label_names
from ..models.instance import adapter_for_module, architecture_kwargs, build_architecture, check_architecture_kwargs, eval_mode, known_architecture
from ..models.probe_head import classifier_from_probe

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


def _where(path: str | Path | None) -> str:
    return f"patched_file {path}" if path is not None else "patched config"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_preprocessing(desc: Any, bad: Any) -> None:
    """A transform description :func:`~csra_posthoc.data.transforms.build_transform` accepts."""

    if not isinstance(desc, dict):
        bad("preprocessing", "not an object")
    kind = desc.get("kind")
    if kind not in ("center-crop", "square-resize"):
        bad("preprocessing", f"kind {kind!r} is not center-crop or square-resize")
    if not _is_count(desc.get("size")):
        bad("preprocessing", "size is not a positive integer")
    if desc.get("interpolation") not in INTERPOLATIONS:
        bad("preprocessing", f"interpolation {desc.get('interpolation')!r} is not one of {', '.join(INTERPOLATIONS)}")
    for key in ("mean", "std"):
        v = desc.get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) and math.isfinite(x) for x in v):
            bad("preprocessing", f"{key} is not a list of 3 finite numbers")
    if not all(x > 0 for x in desc["std"]):
        bad("preprocessing", "std has a value <= 0")
    if kind == "center-crop":
        if not _is_count(desc.get("resize")):
            bad("preprocessing", "resize is not a positive integer")
        crop_pct = desc.get("crop_pct")
        if not (_is_number(crop_pct) and math.isfinite(crop_pct) and crop_pct > 0):
            bad("preprocessing", "crop_pct is not a number > 0")
        if desc.get("crop_mode") not in ("center", "squash", "border"):
            bad("preprocessing", f"crop_mode {desc.get('crop_mode')!r} is not center, squash or border")


def check_config(config: Any, path: str | Path | None = None, *, rebuild: bool = True) -> dict[str, Any]:
    """The one reader of a patched model's config: every field the loaders use is checked.

    Returns ``config`` (a dict) when it is one this version reads and builds from; else raises a
    one-line :class:`CSRAError` naming the file and the field. ``rebuild``: the config of a
    safetensors file, which :func:`load_patched` rebuilds the head from (it must have
    ``head_norm``); False for the configs inside ``.onnx`` / ``.pt2`` / ``.ts`` files. Fields this
    version does not use are passed through unchecked.
    """

    where = _where(path)

    def bad(field: str, why: str) -> Any:
        raise CSRAError(f"{where}: config field {field!r} {why}; the file is damaged or was edited: export it again (CLI: apply --out)", param="patched_file")

    if not isinstance(config, dict):
        bad("(whole config)", "is not a JSON object")
    if config.get("format") != FORMAT or not _is_count(config.get("format_version")) or config["format_version"] > FORMAT_VERSION:
        raise CSRAError(f"{where}: format {config.get('format')} v{config.get('format_version')} is not one this version reads", param="patched_file")
    for field in ("weights_fingerprint", "head_fingerprint"):
        v = config.get(field)
        if not isinstance(v, str) or len(v) != 32 or any(c not in "0123456789abcdef" for c in v):
            raise CSRAError(
                f"{where}: no valid {field} in its config: not written by this version, or damaged; export it again (CLI: apply --out)",
                param="patched_file",
            )
    name = config.get("model")
    if not isinstance(name, str) or not name:
        bad("model", "is not a model name")
    if not known_architecture(name):
        bad("model", f"{name!r} is not an architecture timm or torchvision knows")
    for field in ("model_num_classes", "num_classes"):
        if not _is_count(config.get(field)):
            bad(field, "is not a positive integer")
    try:
        check_architecture_kwargs(name, config.get("model_kwargs"))
    except ValueError as exc:
        bad("model_kwargs", str(exc))
    classes = config.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != config["num_classes"] or not all(isinstance(c, str) for c in classes)):
        bad("classes", f"is not null or a list of {config['num_classes']} names")
    for field in ("weights", "head_description", "baseline_source", "family"):
        if field in config and config[field] is not None and not isinstance(config[field], str):
            bad(field, "is not a string")
    if config.get("head") not in ("model", "probe"):
        bad("head", "is not 'model' or 'probe'")
    lam = config.get("lam")
    if not (_is_number(lam) and math.isfinite(lam) and lam >= 0):
        bad("lam", f"{lam!r} is not a finite number >= 0")
    heads = config.get("heads")
    if heads is not None and not _is_count(heads):
        bad("heads", f"{heads!r} is not null or a positive integer")
    temps = config.get("temperatures")
    if not isinstance(temps, list) or not temps or not all(t == "inf" or (_is_number(t) and math.isfinite(t) and t > 0) for t in temps):
        bad("temperatures", 'is not a non-empty list of numbers > 0 or "inf"')
    if heads is None and len(temps) != 1:
        bad("temperatures", f"has {len(temps)} values for a single-head model (heads null)")
    if heads is not None:
        try:
            expected = head_temperatures(heads)
        except ValueError as exc:
            bad("heads", str(exc))
        if [_from_json_float(t) for t in temps] != list(expected):
            bad("temperatures", f"are not the paper's set for heads {heads}")
    location_head = config.get("location_head", "linear")
    if location_head not in ("linear", "nonlinear"):
        bad("location_head", f"{location_head!r} is not 'linear' or 'nonlinear'")
    if location_head == "nonlinear" and (config["head"] != "model" or config.get("baseline_source") != "model_logits"):
        bad("location_head", "is 'nonlinear' but the head is not the model's own or the baseline is not its logits")
    norm = config.get("head_norm")
    norm_ok = isinstance(norm, dict) and isinstance(norm.get("pooled_norm"), bool) and _is_number(norm.get("eps")) and 0 < norm["eps"] < 1
    if ((rebuild and location_head == "linear") or norm is not None) and not norm_ok:
        bad("head_norm", "is not {pooled_norm: bool, eps: number in (0, 1)}")
    _check_preprocessing(config.get("preprocessing"), bad)
    unsaved = config.get("model_unsaved_buffers")
    if unsaved is not None and (not isinstance(unsaved, list) or not all(isinstance(b, str) for b in unsaved)):
        bad("model_unsaved_buffers", "is not a list of buffer names")
    for field in ("data_config", "input", "output", "export"):
        if field in config and not isinstance(config[field], dict):
            bad(field, "is not an object")
    thresholds = config.get("thresholds")
    if thresholds is not None and (
        not isinstance(thresholds, list) or len(thresholds) != config["num_classes"] or not all(_is_number(t) and math.isfinite(t) for t in thresholds)
    ):
        bad("thresholds", f"is not null or a list of {config['num_classes']} finite numbers")
    if config.get("threshold_source") is not None and not isinstance(config["threshold_source"], str):
        bad("threshold_source", "is not null or a string")
    pool = config.get("test_pool")
    if pool is not None and not (
        isinstance(pool, dict)
        and _is_count(pool.get("train_size"))
        and isinstance(pool.get("window"), list)
        and len(pool["window"]) == 2
        and all(_is_count(v) for v in pool["window"])
    ):
        bad("test_pool", "is not null or {train_size: integer > 0, window: [h, w] integers > 0}")
    return config


def parse_config(text: str | bytes, path: str | Path | None = None, *, rebuild: bool = True) -> dict[str, Any]:
    """A config's JSON text (NaN / Infinity refused), checked by :func:`check_config`."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        config = json.loads(text, parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CSRAError(
            f"{_where(path)}: its config is not valid JSON ({str(exc).splitlines()[0][:120]}); the file is damaged: export it again (CLI: apply --out)",
            param="patched_file",
        ) from None
    return check_config(config, path, rebuild=rebuild)


def verify_fingerprints(
    config: dict[str, Any], model_tensors: dict[str, torch.Tensor], head_tensors: dict[str, torch.Tensor], path: str | Path | None = None
) -> None:
    """Refuse tensors whose fingerprints differ from the config's (the ones taken at ``patch`` time)."""
    for label, field, tensors in (("model", "weights_fingerprint", model_tensors), ("head", "head_fingerprint", head_tensors)):
        if state_dict_fingerprint(tensors) != config[field]:
            raise CSRAError(
                f"{_where(path)}: its {label} tensors do not hash to the {field} in its config (damaged or edited file); export it again (CLI: apply --out)",
                param="patched_file",
            )


def verify_state_dict(config: dict[str, Any], state: dict[str, torch.Tensor], path: str | Path | None = None) -> None:
    """:func:`verify_fingerprints` for a whole ``PatchedModel`` state dict (``model.*`` and
    ``head.classifier.*``), as a TorchScript or ``torch.export`` file holds it."""
    unsaved = set(config.get("model_unsaved_buffers") or [])  # TorchScript keeps them; the fingerprint never saw them
    model_t = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.") and k[len("model.") :] not in unsaved}
    head_t = {k[len("head.classifier.") :]: v for k, v in state.items() if k.startswith("head.classifier.")}
    verify_fingerprints(config, model_t, head_t, path)
    if config.get("location_head") == "nonlinear":  # the model's own head modules: fingerprinted above
        return
    rows = head_t["weight"].shape[0] if "weight" in head_t else None
    if rows != config["num_classes"]:
        raise CSRAError(
            f"{_where(path)}: config field 'num_classes' says {config['num_classes']}, its head has {rows} classes; export it again", param="patched_file"
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

    def __init__(self, adapter: ModelAdapter, head: CSRAHead, config: dict[str, Any]) -> None:
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
        return self.config.get("classes")

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

    def set_settings(self, lam: float | None = None, temperature: float | None = None, heads: int | None = None) -> PatchedModel:
        """The same classifier with other CSRA settings; what is not given keeps its current value
        (lam alone keeps the variant)."""
        if temperature is None and heads is None:
            heads = self.head.heads
            temperature = self.head.temperatures[0] if heads is None else math.inf
        lam = self.head.lam if lam is None else lam
        self.head = CSRAHead(self.head.classifier, lam, math.inf if temperature is None else temperature, heads)
        self.config.update(settings_config(self.head))
        self.config.pop("test_pool", None)  # CSRA settings replace a test-pool head
        return self

    def check_unchanged(self) -> None:
        """Refuse to save or export a model whose tensors no longer hash to the config's fingerprints
        (the shared model was trained or edited after ``patch``): the file would carry a config
        describing other weights than its own."""
        for label, field, module in (("weights", "weights_fingerprint", self.model), ("head", "head_fingerprint", self.head.classifier)):
            if state_dict_fingerprint(module.state_dict()) != self.config[field]:
                raise CSRAError(
                    f"patched model {self.config['model']}: its {label} changed after patch() (no longer the {field} in its config); patch the model again before saving"
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
    if len(values) != num_classes or not all(_is_number(t) and math.isfinite(t) for t in values):
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
    preprocessing: dict[str, Any] | None = None,
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
        "location_head": adapter.info.location_head,
        **settings_config(csra),
        "preprocessing": preprocessing,
        "data_config": asdict(adapter.data_config),
        "input": {"shape": ["batch", 3, preprocessing["size"], preprocessing["size"]], "dtype": "float32", "normalised": True},
        "output": {
            "shape": ["batch", csra.num_classes],
            "meaning": "CSRA scores (logits scale): "
            + ("model logits + lam * attended(head at each location)" if adapter.info.location_head == "nonlinear" else "mean + lam * attended"),
        },
        "thresholds": _checked_thresholds(thresholds, csra.num_classes),
        "threshold_source": None if thresholds is None else (threshold_source or "given to patch()"),
    }
    # buffers outside the state dict (Swin's relative position index): not in weights_fingerprint, but a TorchScript file holds them
    config["model_unsaved_buffers"] = sorted(
        f"{prefix}.{name}".lstrip(".") for prefix, module in adapter.model.named_modules() for name in getattr(module, "_non_persistent_buffers_set", ())
    )
    if test_pool is not None:
        config["test_pool"] = csra.config()  # type: ignore[operator]
        config["output"] = {**config["output"], "meaning": "test-time pooling scores (logits scale): 0.5 * (mean + max) of the window-averaged score map"}
    return PatchedModel(adapter, csra, config)


def save_patched(patched: PatchedModel, path: str | Path) -> None:
    """``.safetensors`` with the model's and the head's tensors and the config as metadata (atomic)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in patched.model.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in patched.head.classifier.state_dict().items()})
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    patched.check_unchanged()
    config = dict(patched.config)
    if not patched.nonlinear:  # a non-linear head is rebuilt from the model's own modules, not from head_norm
        config["head_norm"] = {"pooled_norm": patched.head.classifier.pooled_norm, "eps": patched.head.classifier.norm_eps}
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
    return parse_config(raw, path)


def load_patched(path: str | Path) -> PatchedModel:
    """Rebuild a model saved by :func:`save_patched` (or ``apply --out FILE.safetensors``), weights only.

    The config is checked field by field (:func:`check_config`) and the model and head tensors
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
        raise CSRAError(f"{where}: its tensors cannot be read ({type(exc).__name__}); the file is damaged: export it again", param="patched_file") from None
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    head_t = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    verify_fingerprints(config, model_sd, head_t, path)
    if config.get("location_head") == "nonlinear":
        return _load_nonlinear(config, model_sd, path)
    num_classes = config["num_classes"]
    w = head_t.get("weight")
    shapes_ok = (
        set(head_t) == {"weight", "bias", "norm_weight", "norm_bias"}
        and w is not None
        and w.ndim == 2
        and tuple(head_t["bias"].shape) == (w.shape[0],)
        and tuple(head_t["norm_weight"].shape) == tuple(head_t["norm_bias"].shape) == (w.shape[1],)
    )
    if not shapes_ok:
        raise CSRAError(f"{where}: its head tensors are not a per-location classifier (weight, bias, norm_weight, norm_bias)", param="patched_file")
    if w.shape[0] != num_classes:  # type: ignore[union-attr]
        raise CSRAError(f"{where}: config field 'num_classes' says {num_classes}, its head has {w.shape[0]} classes; export it again", param="patched_file")  # type: ignore[union-attr]
    adapter = _rebuilt_adapter(config, model_sd, where)
    norm = config["head_norm"]
    classifier = LocationHead(head_t["weight"], head_t["bias"], head_t["norm_weight"], head_t["norm_bias"], norm["eps"], norm["pooled_norm"])
    csra = _config_head(config, classifier)
    if config.get("test_pool") is not None:
        csra = TimmPoolHead(classifier, config["test_pool"]["window"], config["test_pool"]["train_size"])
    return PatchedModel(adapter, csra, config)


def _config_head(config: dict[str, Any], classifier: Any) -> CSRAHead:
    temps = [_from_json_float(t) for t in config["temperatures"]]
    return CSRAHead(classifier, config["lam"], temperature=temps[0] if config.get("heads") is None else math.inf, heads=config.get("heads"))


def _rebuilt_adapter(config: dict[str, Any], model_sd: dict[str, torch.Tensor], where: str) -> ModelAdapter:
    """The config's architecture with the file's model tensors, wrapped (and identity-checked) again."""

    model = build_architecture(config["model"], config["model_num_classes"], config.get("model_kwargs"), where=where)
    try:
        missing, unexpected = model.load_state_dict(model_sd, strict=False)
    except RuntimeError:  # size mismatches
        missing, unexpected = ["(shape mismatch)"], []
    if missing or unexpected:
        raise CSRAError(
            f"{where}: its tensors do not fit {config['model']} ({len(missing)} missing, {len(unexpected)} unexpected, or other shapes): config field 'model' or 'model_num_classes' does not match the tensors",
            param="patched_file",
        )
    model.requires_grad_(False)  # an inference model (its own parameters: nobody else holds them)
    return adapter_for_module(model.eval(), config["model"], weights=config.get("weights") or "patched")


def _load_nonlinear(config: dict[str, Any], model_sd: dict[str, torch.Tensor], path: Path) -> PatchedModel:
    """A non-linear head is the rebuilt model's own head modules: it must hash to the config's head_fingerprint."""
    where = _where(path)
    adapter = _rebuilt_adapter(config, model_sd, where)
    if adapter.info.location_head != "nonlinear" or state_dict_fingerprint(adapter.head.state_dict()) != config["head_fingerprint"]:
        raise CSRAError(f"{where}: its model's head is not the non-linear head its config describes (head_fingerprint); export it again", param="patched_file")
    if adapter.num_classes != config["num_classes"]:
        raise CSRAError(
            f"{where}: config field 'num_classes' says {config['num_classes']}, its head has {adapter.num_classes} classes; export it again",
            param="patched_file",
        )
    return PatchedModel(adapter, _config_head(config, adapter.head), config)
