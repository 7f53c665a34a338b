"""Hugging Face ``transformers`` image classifiers: ``--model hf:FOLDER_OR_NAME`` and ``patch(hf_model)``.

The weights come from a local folder (``config.json`` + ``model.safetensors``, as ``save_pretrained``
writes it) or a hub name already in the local Hugging Face cache; nothing is downloaded, and no code
from a folder is ever run (a config with ``auto_map`` is refused). Preprocessing is read from the
folder's ``preprocessor_config.json``.

Per-location head, per family (the model's own classifier at each location of the last hidden
state, before pooling):

- ResNet, RegNet, EfficientNet, MobileNetV2: feature map -> average pool -> linear.
- ConvNeXt(V2): feature map -> average pool -> LayerNorm -> linear (the norm applied per location
  with the pooled vector's statistics, as for timm's ConvNeXt).
- Swin: tokens after the final LayerNorm -> average pool -> linear (tokens put back on their grid).
- BEiT with mean pooling: patch tokens -> mean -> LayerNorm -> linear.
- ViT, DeiT, BEiT without mean pooling: class-token models; the baseline is the average of the
  per-patch logits (as for timm's ViTs), the model's own class-token logits are reported beside it.

The identity (mean of per-location scores == the model's logits) is checked at runtime like every
other adapter. A patched model records the class name and the whole config JSON (``model_kwargs``)
and is rebuilt from them, never from the folder.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from ..errors import CSRAError, first_line
from ..heads.location import LocationHead
from .base import AdapterInfo, BaselineSource, DataConfig, ModelAdapter, tokens_to_grid

HF_PREFIX = "hf:"

Rule = Literal["cls", "beit", "tokens", "convnext", "map"]
# model_type -> how the head pools; the classes this module knows how to take apart
FAMILIES: dict[str, Rule] = {
    "vit": "cls",
    "deit": "cls",
    "beit": "beit",
    "swin": "tokens",
    "convnext": "convnext",
    "convnextv2": "convnext",
    "resnet": "map",
    "regnet": "map",
    "efficientnet": "map",
    "mobilenet_v2": "map",
}
CLASSES: dict[str, str] = {
    "ViTForImageClassification": "vit",
    "DeiTForImageClassification": "deit",
    "DeiTForImageClassificationWithTeacher": "deit",
    "BeitForImageClassification": "beit",
    "SwinForImageClassification": "swin",
    "ConvNextForImageClassification": "convnext",
    "ConvNextV2ForImageClassification": "convnextv2",
    "ResNetForImageClassification": "resnet",
    "RegNetForImageClassification": "regnet",
    "EfficientNetForImageClassification": "efficientnet",
    "MobileNetV2ForImageClassification": "mobilenet_v2",
}
DEFAULT_CLASS = {model_type: cls for cls, model_type in reversed(list(CLASSES.items()))}
SUPPORTED_TEXT = (
    "ViT, DeiT, BEiT, Swin, ConvNeXt(V2), ResNet, RegNet, EfficientNet, MobileNetV2 *ForImageClassification"
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def is_hf_name(name: str) -> bool:
    return name.startswith(HF_PREFIX)


def is_hf_module(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.")


def _transformers(name: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise CSRAError(
            f"model {name}: Hugging Face models need the transformers package: pip install 'csra-posthoc[hf]'",
            param="model",
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' own warnings and progress bars off while the block runs (then as they were):
    the tool says what matters in its own words."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The Hugging Face clients in offline mode while the block runs (nothing is downloaded)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resolve_folder(name: str) -> Path:
    """The local folder of ``hf:PATH_OR_NAME``: the path itself, or the hub name's snapshot in the
    local Hugging Face cache (never downloaded)."""
    spec = name[len(HF_PREFIX) :] if is_hf_name(name) else name
    if not spec:
        raise CSRAError(
            f"model {name}: name a folder or a hub model after hf: (hf:./my-model, hf:google/vit-base-patch16-224)",
            param="model",
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CSRAError(
            f"model {name}: {spec} is a file; hf: takes the folder holding config.json and model.safetensors",
            param="model",
        )
    looks_like_repo = spec.count("/") <= 1 and not spec.startswith((".", "/", "~"))
    if looks_like_repo:
        from huggingface_hub import snapshot_download

        try:
            with _offline():
                return Path(snapshot_download(spec, local_files_only=True))
        except Exception:
            pass
    else:
        raise CSRAError(
            f"model {name}: no such folder {spec} (hf: takes the folder save_pretrained wrote, or a cached hub name)",
            param="model",
        )
    raise CSRAError(
        f"model {name}: no such folder, and no hub model {spec!r} in the local Hugging Face cache (nothing is downloaded: "
        "fetch it once with huggingface-cli download, or pass the folder save_pretrained wrote)",
        param="model",
    )


def check_hf_config(cfg: Any, name: str, param: str = "model") -> tuple[str, str]:
    """``(class name, model_type)`` of a config this module can build, or a one-line refusal."""
    if not isinstance(cfg, dict):
        raise CSRAError(f"model {name}: config.json is not a JSON object", param=param)
    if cfg.get("auto_map") or cfg.get("trust_remote_code"):
        raise CSRAError(
            f"model {name}: its config asks for custom code (auto_map / trust_remote_code); csra-posthoc never runs code from a model folder",
            param=param,
        )
    model_type = cfg.get("model_type")
    archs = [a for a in cfg.get("architectures") or [] if isinstance(a, str)]
    known = [a for a in archs if a in CLASSES]
    if model_type not in FAMILIES or (archs and not known):
        what = f"a {model_type!r} model" + (f" ({', '.join(archs)})" if archs else "")
        image = any(a.endswith("ForImageClassification") for a in archs)
        why = "an image classifier of a family not supported here" if image else "not an image classifier"
        raise CSRAError(f"model {name}: {what} is {why}; supported are {SUPPORTED_TEXT}", param=param)
    cls = known[0] if known else DEFAULT_CLASS[model_type]
    if CLASSES[cls] != model_type:
        raise CSRAError(f"model {name}: architectures says {cls} but model_type is {model_type!r}", param=param)
    return cls, model_type


def source_files(name: str) -> list[Path]:
    """The files of ``hf:PATH_OR_NAME``'s folder a build reads (config, preprocessing, weights and
    their indexes): their sizes and times key the cache's memo of the built model."""
    folder = resolve_folder(name)
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"))


def read_hf_config(folder: Path, name: str) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CSRAError(
            f"model {name}: {folder} has no config.json (write the folder with save_pretrained)", param="model"
        )
    try:
        cfg = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CSRAError(f"model {name}: {path} is not valid JSON ({first_line(exc)})", param="model") from None
    check_hf_config(cfg, name)
    return cfg


def build_hf_model(cfg: dict[str, Any], cls_name: str, name: str, param: str = "model") -> nn.Module:
    """An untrained model of class ``cls_name`` from a config dict (only the classes in :data:`CLASSES`)."""
    transformers = _transformers(name)
    _, model_type = check_hf_config({**cfg, "architectures": [cls_name]}, name, param)
    try:
        with torch.random.fork_rng(devices=[]), _quiet(transformers):
            config = transformers.CONFIG_MAPPING[model_type].from_dict(dict(cfg))
            torch.manual_seed(0)
            return getattr(transformers, cls_name)(config).eval()
    except CSRAError:
        raise
    except Exception as exc:
        raise CSRAError(
            f"model {name}: {cls_name} cannot be built from its config ({type(exc).__name__}: {first_line(exc)})",
            param=param,
        ) from None


def load_hf_model(name: str) -> tuple[nn.Module, Path]:
    """The model of ``hf:PATH_OR_NAME`` with the folder's weights (offline; weights only)."""
    transformers = _transformers(name)
    folder = resolve_folder(name)
    cfg = read_hf_config(folder, name)
    cls_name, _ = check_hf_config(cfg, name)
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise CSRAError(
            f"model {name}: {folder} has config.json but no weights ({' or '.join(WEIGHT_FILES[::2])})", param="model"
        )
    try:
        with _offline(), _quiet(transformers):
            model, info = getattr(transformers, cls_name).from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True
            )
    except Exception as exc:
        raise CSRAError(
            f"model {name}: its weights cannot be read ({type(exc).__name__}: {first_line(exc)})", param="model"
        ) from None
    missing, bad = list(info.get("missing_keys") or []), list(info.get("mismatched_keys") or [])
    if missing or bad:
        shown = ", ".join(str(k) for k in (missing + bad)[:2])
        raise CSRAError(
            f"model {name}: its weights do not fit {cls_name} ({len(missing)} missing, {len(bad)} of another shape, e.g. {shown})",
            param="model",
        )
    return model.float().eval(), folder


def _size(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "height" in value:
            return int(value["height"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    return None


def hf_data_config(model: nn.Module, folder: Path | None = None) -> tuple[DataConfig, str | None]:
    """The input the model expects: the folder's ``preprocessor_config.json`` (size, crop, mean /
    std, resample), else its config's image size with ImageNet defaults (and a note saying so)."""
    config = getattr(model, "config", None)
    image_size = getattr(config, "image_size", None)
    base = DataConfig(
        input_size=int(image_size) if isinstance(image_size, int) else 224,
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="squash",
    )
    path = folder / "preprocessor_config.json" if folder is not None else None
    if path is None or not path.is_file():
        return (
            base,
            "no preprocessor_config.json: resized to the model's size, ImageNet mean/std"
            if folder is not None
            else None,
        )
    try:
        pre = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return base, "preprocessor_config.json is not valid JSON: resized to the model's size, ImageNet mean/std"
    size = pre.get("size")
    resize = _size(size) or base.input_size
    crop = _size(pre.get("crop_size")) if pre.get("do_center_crop") else None
    shortest = isinstance(size, dict) and "shortest_edge" in size
    if (
        "crop_pct" in pre and shortest and pre.get("crop_pct")
    ):  # ConvNeXt's processor: resize shortest/crop_pct, crop shortest
        if resize >= 384:
            input_size, crop_pct, mode = resize, 1.0, "squash"  # warped to size x size, no crop
        else:
            input_size, crop_pct, mode = resize, float(pre["crop_pct"]), "center"
    elif crop:  # resize, then center crop
        input_size, crop_pct, mode = crop, crop / resize, "center" if shortest else "squash"
    else:  # resize straight to the size
        input_size, crop_pct, mode = resize, 1.0, "center" if shortest else "squash"
    mean, std = _normalisation(pre, folder, base)
    interpolation = (
        _PIL_RESAMPLE.get(pre.get("resample"), "bilinear") if isinstance(pre.get("resample"), int) else "bilinear"
    )
    note = None
    return DataConfig(input_size, mean, std, interpolation, crop_pct, mode), note


Triple = tuple[float, float, float]


def _normalisation(pre: dict[str, Any], folder: Path | None, base: DataConfig) -> tuple[Triple, Triple]:
    """The processor's pixel arithmetic as one ``(t - mean') / std'`` on ``t = pixels / 255`` (what
    our transforms feed the normalisation): rescale by ``rescale_factor`` (``do_rescale``), minus 1
    (EfficientNet's ``rescale_offset``), ``(x - image_mean) / image_std`` (``do_normalize``), and a
    second division by ``image_std`` (EfficientNet's ``include_top``)."""
    try:
        image_mean = [float(v) for v in pre.get("image_mean", base.mean)]
        image_std = [float(v) for v in pre.get("image_std", base.std)]
        scale = 255 * float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 255.0
    except (TypeError, ValueError):
        raise CSRAError(
            f"preprocessor_config.json in {folder}: image_mean / image_std / rescale_factor are not numbers",
            param="model",
        ) from None
    if len(image_mean) != 3 or len(image_std) != 3 or not all(v > 0 for v in image_std) or not scale > 0:
        raise CSRAError(
            f"preprocessor_config.json in {folder}: image_mean / image_std are not 3 values each (std > 0)",
            param="model",
        )
    offset = 1.0 if pre.get("rescale_offset") else 0.0
    normalise = pre.get("do_normalize", True)
    mean = [offset + (m if normalise else 0.0) for m in image_mean]
    div = [(d if normalise else 1.0) * (d if pre.get("include_top") else 1.0) for d in image_std]
    return (mean[0] / scale, mean[1] / scale, mean[2] / scale), (div[0] / scale, div[1] / scale, div[2] / scale)


class HFAdapter(ModelAdapter):
    """A ``*ForImageClassification``: ``base_model`` gives the last hidden state, the family's pooling
    and classifier give the model's logits from it."""

    def __init__(
        self,
        model: nn.Module,
        head: LocationHead,
        info: AdapterInfo,
        data_config: DataConfig,
        rule: Rule,
        prefix: int,
        patch: int,
    ) -> None:
        super().__init__(model, head, info, data_config)
        self.rule, self.prefix, self.patch = rule, prefix, patch
        # position embeddings resampled to the input size, where this transformers version offers it
        takes = inspect.signature(self.wrapped.base_model.forward).parameters
        self.backbone_kwargs = (
            {"interpolate_pos_encoding": True}
            if rule in ("cls", "beit") and "interpolate_pos_encoding" in takes
            else {}
        )

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch:
            size = [int(v) for v in x.shape[-2:]]
            if any(v % self.patch for v in size):
                raise CSRAError(
                    f"model {self.info.name}: img_size {'x'.join(map(str, size))} is not divisible by its patch size {self.patch}; "
                    f"use a multiple of {self.patch} (e.g. {max(1, round(size[0] / self.patch)) * self.patch})",
                    param="img_size",
                )
        return self.wrapped.base_model(pixel_values=x, return_dict=True, **self.backbone_kwargs).last_hidden_state

    def feature_map(self, raw: torch.Tensor) -> torch.Tensor:
        if raw.dim() == 4:
            return raw
        return tokens_to_grid(raw[:, self.prefix :])

    def model_logits(self, raw: torch.Tensor) -> torch.Tensor:
        m, base = self.wrapped, self.wrapped.base_model
        if self.rule == "cls":
            if hasattr(m, "distillation_classifier"):  # DeiT with teacher: the mean of its two heads
                return (m.cls_classifier(raw[:, 0]) + m.distillation_classifier(raw[:, 1])) / 2
            return m.classifier(raw[:, 0])
        if self.rule == "beit":
            return m.classifier(base.pooler(raw))
        if self.rule == "tokens":
            return m.classifier(torch.flatten(base.pooler(raw.transpose(1, 2)), 1))
        if self.rule == "convnext":
            return m.classifier(base.layernorm(raw.mean([-2, -1])))
        return m.classifier(torch.flatten(base.pooler(raw), 1))


def _linear(module: Any, name: str) -> nn.Linear:
    if isinstance(module, nn.Sequential):  # ResNet / RegNet: Flatten -> Linear
        *rest, last = list(module)
        if all(isinstance(r, (nn.Flatten, nn.Dropout, nn.Identity)) for r in rest):
            module = last
    if isinstance(module, nn.Linear):
        return module
    raise CSRAError(
        f"model {name}: classifier is {type(module).__name__}, not a linear layer (num_labels=0 has no head), so it cannot be applied per location"
    )


def hf_label_names(model: nn.Module) -> list[str] | None:
    """The class names of a ``transformers`` model's config (``id2label``), or None for any other
    model and for transformers' placeholder names (``LABEL_0``, ...)."""
    if not is_hf_module(model):
        return None
    config: Any = getattr(model, "config", None)
    labels = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", 0) or 0)
    names = [labels.get(i, labels.get(str(i))) for i in range(n)]
    if not n or not all(isinstance(v, str) for v in names) or names == [f"LABEL_{i}" for i in range(n)]:
        return None
    return [str(v) for v in names]


def hf_instance_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return HF_PREFIX + str(
        getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__
    )


def hf_architecture_kwargs(model: nn.Module) -> dict[str, Any]:
    """What rebuilds the architecture without the folder: the class name and the whole config."""
    config: Any = model.config
    return {"hf_class": type(model).__name__, "hf_config": json.loads(config.to_json_string(use_diff=False))}


def check_hf_architecture_kwargs(name: str, kwargs: Any) -> dict[str, Any]:
    """``ValueError`` unless ``kwargs`` is ``{hf_class, hf_config}`` of a supported class (no custom code)."""
    if not isinstance(kwargs, dict) or set(kwargs) != {"hf_class", "hf_config"}:
        raise ValueError("must be {hf_class, hf_config} for a Hugging Face model")
    if kwargs["hf_class"] not in CLASSES:
        raise ValueError(f"hf_class {kwargs['hf_class']!r} is not one of {', '.join(CLASSES)}")
    try:
        check_hf_config(
            {**kwargs["hf_config"], "architectures": [kwargs["hf_class"]]}
            if isinstance(kwargs["hf_config"], dict)
            else None,
            name,
        )
    except CSRAError as exc:
        raise ValueError(f"hf_config: {exc.args[0]}") from None
    return dict(kwargs)


def build_hf_adapter(model: nn.Module, name: str, weights: str, folder: Path | None = None) -> ModelAdapter:
    """Wrap a ``transformers`` ``*ForImageClassification``; refuse (one line) what cannot be applied per location."""
    cls_name = type(model).__name__
    if cls_name not in CLASSES:
        raise CSRAError(f"model {name}: transformers {cls_name} is not supported; supported are {SUPPORTED_TEXT}")
    config: Any = model.config
    if getattr(config, "auto_map", None):
        raise CSRAError(
            f"model {name}: its config asks for custom code (auto_map); csra-posthoc never runs code from a model folder"
        )
    model_type = CLASSES[cls_name]
    rule = FAMILIES[model_type]
    base: Any = getattr(model, "base_model", None)
    m: Any = model
    source: BaselineSource = "model_logits"
    prefix, patch = 0, 0
    notes: list[str] = []
    if rule == "cls":
        prefix, patch = (2 if model_type == "deit" else 1), int(config.patch_size)
        if hasattr(m, "distillation_classifier"):
            a, b = _linear(m.cls_classifier, name), _linear(m.distillation_classifier, name)
            head = LocationHead((a.weight + b.weight) / 2, (a.bias + b.bias) / 2)
        else:
            head = LocationHead.from_linear(_linear(m.classifier, name))
        source = "patch_average"
    elif rule == "beit":
        prefix, patch = 1, int(config.patch_size)
        linear = _linear(m.classifier, name)
        norm = getattr(base.pooler, "layernorm", None) if getattr(base, "pooler", None) is not None else None
        if getattr(base, "pooler", None) is None:
            raise CSRAError(f"model {name}: BEiT without a pooler is not an image classifier")
        if isinstance(norm, nn.LayerNorm):
            head = LocationHead(linear.weight, linear.bias, norm.weight, norm.bias, norm.eps, pooled_norm=True)
        else:
            head, source = LocationHead.from_linear(linear), "patch_average"
    elif rule == "convnext":
        head = LocationHead.from_linear(_linear(m.classifier, name), base.layernorm)
        notes.append("norm after pooling: applied per location with the pooled vector's statistics")
    else:
        if model_type == "efficientnet" and getattr(config, "pooling_type", "mean") != "mean":
            raise CSRAError(
                f"model {name}: pooling_type {config.pooling_type!r}, not 'mean'; CSRA's identity needs average pooling"
            )
        if rule == "tokens" and getattr(base, "pooler", None) is None:
            raise CSRAError(f"model {name}: Swin without a pooler is not an image classifier")
        head = LocationHead.from_linear(_linear(m.classifier, name))
    if source == "patch_average":
        notes.append(
            "class-token model: the baseline is the average of per-patch logits, not the model's own class-token logits (reported separately)"
        )
    data_config, note = hf_data_config(model, folder)
    if note:
        notes.append(note)
    info = AdapterInfo(name=name, family=f"hf-{model_type}", baseline_source=source, weights=weights, notes=notes)
    return HFAdapter(model, head, info, data_config, rule, prefix, patch)


def load_hf_adapter(name: str) -> ModelAdapter:
    """``hf:PATH_OR_NAME`` as an adapter (identity not yet checked: :func:`csra_posthoc.load_model` does)."""
    model, folder = load_hf_model(name)
    return build_hf_adapter(model, name, f"hf:{folder}", folder)
