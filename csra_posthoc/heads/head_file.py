"""Probe head files: a fitted :class:`~csra_posthoc.heads.location.LocationHead` as safetensors
(weights + JSON metadata), written by ``sweep --save-head`` and the probe cache, read by
``load_model(head=)``, ``patch(head=)``, ``apply`` / ``predict``, and checked against the model
it is put on (:func:`classifier_from_probe`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..cache.store import write_entry
from ..errors import CSRAError
from ..models.base import ModelAdapter
from .location import LocationHead

PROBE_FORMAT = 1


def save_head(head: LocationHead, path: str | Path, meta: dict) -> None:
    """A head as safetensors (weights + JSON metadata), loadable by :func:`load_head`; the cache's writer."""
    tensors = dict(head.state_dict())
    write_entry(Path(path), tensors, {"meta": json.dumps({**meta, "pooled_norm": head.pooled_norm, "norm_eps": head.norm_eps, "format": PROBE_FORMAT})})


def head_from(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[LocationHead, dict]:
    """The head and its metadata from a head file's (or the probe cache's) tensors and metadata."""
    meta = json.loads(metadata["meta"])
    t = tensors
    return LocationHead(t["weight"], t["bias"], t["norm_weight"], t["norm_bias"], meta["norm_eps"], meta["pooled_norm"]), meta


def load_head(path: str | Path) -> tuple[LocationHead, dict]:
    """A head file (``save_head_to``, or an older release's): any cache-format version is accepted."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        return head_from(tensors, metadata)
    except Exception as exc:
        raise CSRAError(f"head file {path} cannot be read ({type(exc).__name__}); delete it or re-fit the probe") from None


def classifier_from_probe(adapter: ModelAdapter, head: Any) -> tuple[LocationHead, dict]:
    """A probe saved by ``sweep --save-head`` (path, or ``(LocationHead, meta)``), checked against the model."""
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
