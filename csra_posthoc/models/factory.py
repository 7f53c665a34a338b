"""The model factory: a model name and one weight source in, a verified :class:`ModelAdapter` out.

Weight-source policy: exactly one of a local checkpoint (read weights-only, classifier size
inferred from it), ``pretrained`` (packaged offline weights where installed, else the hub), or
``random_init`` (seeded, for tests and benchmarks).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..defaults import TORCHVISION_PREFIX
from ..errors import CSRAError, first_line
from .base import ModelAdapter
from .checkpoint import (
    checkpoint_note,
    published_layout,
    read_checkpoint,
    state_dict_fingerprint,
    weights_only_downloads,
)
from .hf_models import load_hf_adapter
from .hub import offline_if_unreachable, require_hub_weights
from .identity import verify_identity
from .offline_weights import has_offline_weights, offline_state_dict
from .probe_head import ProbeHeadAdapter, classifier_from_probe
from .timm_models import build_timm_adapter, classifier_key
from .torchvision_models import TORCHVISION_CLASSIFIER_KEYS, build_torchvision_adapter

# timm families built with dynamic_img_size=True: any --img-size, timm resamples the position
# embeddings (ViT, DeiT, EVA) or builds the window masks (Swin, SwinV2) for it on each forward
_TIMM_VIT_MODULES = {
    f"timm.models.{m}"
    for m in ("vision_transformer", "deit", "eva", "swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr")
}


def _infer_num_classes(sd: dict[str, torch.Tensor], keys: tuple[str, ...], checkpoint: Path) -> int:
    for key in keys:
        if key in sd and sd[key].dim() >= 2:
            return int(sd[key].shape[0])
    raise CSRAError(
        f"checkpoint {checkpoint}: no classifier weight found (looked for {', '.join(keys)}); is it a checkpoint of this model?",
        param="checkpoint",
    )


POSITION_KEYS = ("pos_embed", "relative_position", "rel_pos", "pos_block", "position_embeddings")


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], name: str, checkpoint: Path) -> None:
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:160])
        if any(key in detail for key in POSITION_KEYS):  # trained at another input size (or window)
            detail += (
                " The checkpoint was trained at another input size; load it with the model name of that size "
                f"(timm: {name.rsplit('_', 1)[0]}_<size>, see timm.list_models('{name.split('_')[0]}*'))"
            )
        raise CSRAError(f"checkpoint {checkpoint} does not fit model {name}: {detail}", param="checkpoint") from None
    if missing or unexpected:
        raise CSRAError(
            f"checkpoint {checkpoint} does not fit model {name}: {len(missing)} missing keys "
            f"(e.g. {', '.join(missing[:2]) or '-'}), {len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2]) or '-'})",
            param="checkpoint",
        )


def _check_timm_name(arch: str) -> None:
    """Refuse a name timm does not know, before anything asks timm about it (its registry raises
    RuntimeError tracebacks for unknown names)."""
    import timm

    if not timm.is_model(arch):
        import difflib

        close = timm.list_models(f"*{arch}*")[:5] or difflib.get_close_matches(
            arch, timm.list_models(), n=5, cutoff=0.75
        )
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else "; list them with python -c 'import timm; print(timm.list_models())'"
        )
        raise CSRAError(f"model {arch}: unknown timm model{hint}", param="model")
    if "." in arch:  # arch.tag: timm knows the arch, but the tag must be one of its pretrained tags
        base, tag = arch.split(".", 1)
        known = timm.list_pretrained(f"{base}.*")
        if arch not in known:
            shown = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "")
            raise CSRAError(
                f"model {arch}: timm has no pretrained tag {tag!r} for {base}; known: {shown or 'none'}", param="model"
            )


def _create_timm(arch: str, pretrained: bool, num_classes: int | None) -> nn.Module:
    import timm

    _check_timm_name(arch)
    kwargs: dict = {} if num_classes is None else {"num_classes": num_classes}
    if timm.models.model_entrypoint(arch).__module__ in _TIMM_VIT_MODULES:
        kwargs["dynamic_img_size"] = True  # any --img-size: timm interpolates the position embeddings
    try:
        with offline_if_unreachable():  # a hub found unreachable earlier is not retried
            return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except Exception as exc:  # hub download failure and the like
        raise CSRAError(
            f"model {arch}, pretrained=True: could not get weights ({first_line(exc)})", param="pretrained"
        ) from None


def _create_torchvision(arch: str, pretrained: bool, num_classes: int | None) -> nn.Module:
    import torchvision.models as tvm

    if arch not in tvm.list_models(module=tvm):
        raise CSRAError(f"model torchvision:{arch}: unknown torchvision classification model", param="model")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        with weights_only_downloads():  # torchvision's cached download is read weights-only
            return tvm.get_model(arch, weights="DEFAULT" if pretrained else None, **kwargs)
    except Exception as exc:
        raise CSRAError(f"model torchvision:{arch}: could not build it ({first_line(exc)})", param="model") from None


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_init: bool = False,
    num_classes: int | None = None,
    head: str | Path | None = None,
    img_size: int | None = None,
) -> ModelAdapter:
    """Build an adapter for a timm model name, ``torchvision:<arch>`` or ``hf:<folder or cached hub name>``.

    Exactly one weight source: ``checkpoint`` (num_classes inferred from its head), ``pretrained``
    (hub weights, or packaged offline weights where installed), or ``random_init`` (tests and
    benchmarks only: numbers from it mean nothing); ``hf:`` models take their folder's weights
    (``pretrained`` or no source). ``head``: a probe head file (``sweep`` / ``demo
    --save-head``) that replaces the classifier; it must have been fitted on this model.
    ``img_size``: the input side the caller will run the model at; a timm model's load-time checks
    (its head read off one input, the identity) run at it unless the model takes one size only.
    """
    if name.startswith("hf:"):  # Hugging Face: the folder (or cached hub snapshot) is the weight source
        return _load_hf(name, checkpoint, random_init, head)
    if sum([checkpoint is not None, pretrained, random_init]) != 1:
        raise CSRAError(
            "model needs exactly one weight source: `checkpoint` (a path), pretrained=True or random_init=True",
            param="model",
        )
    is_tv = name.startswith(TORCHVISION_PREFIX)
    arch = name[len(TORCHVISION_PREFIX) :] if is_tv else name
    create = _create_torchvision if is_tv else _create_timm

    if not is_tv:
        _check_timm_name(arch)
    note = layout = None  # which entry of a training checkpoint was used (EMA or raw weights); a renamed layout
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        sd, entry = read_checkpoint(checkpoint)
        if not is_tv:
            sd, layout = published_layout(arch, sd, checkpoint)  # e.g. ASL's TResNet, renamed as timm renames it
        keys = TORCHVISION_CLASSIFIER_KEYS if is_tv else (classifier_key(arch),)
        model = create(arch, False, _infer_num_classes(sd, keys, checkpoint))
        _load_strict(model, sd, name, checkpoint)
        weights = f"checkpoint:{checkpoint}"
        note = checkpoint_note(entry)
    elif pretrained and not is_tv and has_offline_weights(arch):
        model = create(arch, False, None)
        packaged = offline_state_dict(arch, model)
        assert packaged is not None  # has_offline_weights said so
        model.load_state_dict(packaged)
        weights = "pretrained:packaged"
    else:
        if pretrained and not is_tv:
            require_hub_weights(arch)  # no network, no local copy: one line now, not a minute of retries
        # random init is seeded (so a random-init run's cache is reusable) on a forked RNG: timm and
        # torchvision initialise from the global generator, and the caller's stream must not change
        with torch.random.fork_rng(devices=[]):
            if random_init:
                torch.manual_seed(0)
            model = create(arch, pretrained, num_classes)
        weights = "pretrained:hub" if pretrained else "random-init"
    model.eval()
    adapter = (
        build_torchvision_adapter(model, name, arch, weights)
        if is_tv
        else build_timm_adapter(model, name, weights, img_size=img_size)
    )
    adapter.info.notes.extend(n for n in (note, layout) if n is not None)
    adapter.info.weights_fingerprint = state_dict_fingerprint(model.state_dict())
    verify_identity(adapter)
    if head is not None:
        return with_probe_head(adapter, head).eval()
    return adapter.eval()


def _load_hf(name: str, checkpoint: str | Path | None, random_init: bool, head: str | Path | None) -> ModelAdapter:
    """``hf:PATH_OR_NAME``: its folder's weights (``pretrained`` or no weight source at all)."""

    if checkpoint is not None or random_init:
        raise CSRAError(
            f"model {name}: a Hugging Face folder carries its own weights; drop `checkpoint` / `random_init`",
            param="model",
        )
    adapter = load_hf_adapter(name)
    adapter.info.weights_fingerprint = state_dict_fingerprint(adapter.model.state_dict())
    verify_identity(adapter)
    return with_probe_head(adapter, head).eval() if head is not None else adapter.eval()


def with_probe_head(adapter: ModelAdapter, head_file: str | Path) -> ModelAdapter:
    """``adapter`` with a saved probe as its classifier (checked against the model: features, norm, name)."""
    from dataclasses import replace

    classifier, meta = classifier_from_probe(adapter, head_file)
    probe = meta.get("probe") or {}
    described = (
        f"linear probe on {probe['dataset']} {probe['split']}"
        if probe.get("dataset")
        else f"probe head {Path(head_file).name}"
    )
    info = replace(adapter.info, baseline_source="model_logits", head=described, notes=list(adapter.info.notes))
    return ProbeHeadAdapter(adapter, classifier, info)
