"""Probe head files: a fitted :class:`~csra_posthoc.heads.location.LocationHead` as safetensors
(weights + JSON metadata), written by ``sweep --save-head`` and the probe cache, read by
``load_model(head=)``, ``patch(head=)``, ``apply`` / ``predict`` (checked against the model it is
put on by :func:`csra_posthoc.models.probe_head.classifier_from_probe`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..cache.store import write_entry
from ..errors import CSRAError
from .location import LocationHead

PROBE_FORMAT = 1


def save_head(head: LocationHead, path: str | Path, meta: dict) -> None:
    """A head as safetensors (weights + JSON metadata), loadable by :func:`load_head`; the cache's writer."""
    tensors = dict(head.state_dict())
    write_entry(
        Path(path),
        tensors,
        {
            "meta": json.dumps(
                {**meta, "pooled_norm": head.pooled_norm, "norm_eps": head.norm_eps, "format": PROBE_FORMAT}
            )
        },
    )


def head_from(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[LocationHead, dict]:
    """The head and its metadata from a head file's (or the probe cache's) tensors and metadata."""
    meta = json.loads(metadata["meta"])
    t = tensors
    return LocationHead(
        t["weight"], t["bias"], t["norm_weight"], t["norm_bias"], meta["norm_eps"], meta["pooled_norm"]
    ), meta


def load_head(path: str | Path) -> tuple[LocationHead, dict]:
    """A head file (``save_head_to``, or an older release's): any cache-format version is accepted."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        return head_from(tensors, metadata)
    except Exception as exc:
        raise CSRAError(
            f"head file {path} cannot be read ({type(exc).__name__}); delete it or re-fit the probe"
        ) from None
