"""On-disk cache of :class:`ClassStatistics`: one safetensors file per key, written atomically.

The key hashes everything that changes the numbers: the weights (content hash), the head, the
transform, the image files and labels, the cached temperatures and AMP. A half-written file is
never visible under its final name (write to a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .errors import CSRAError
from .statistics import ClassStatistics

CACHE_FORMAT = 1
_TENSORS = ("labels", "avg", "max", "attn", "logits")


def default_cache_dir() -> Path:
    """``$CSRA_POSTHOC_CACHE`` or the user's cache directory."""
    env = os.environ.get("CSRA_POSTHOC_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("csra-posthoc"))


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(cache_dir: Path, model: str, dataset: str, split: str, key: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}-{dataset}-{split}")
    return Path(cache_dir) / f"{slug}-{key}.safetensors"


def save_statistics(stats: ClassStatistics, path: Path) -> None:
    """Write atomically: a crash or Ctrl-C leaves no file under ``path``."""
    from safetensors.torch import save_file

    tensors = {name: getattr(stats, name).contiguous() for name in _TENSORS}
    tensors["temperatures"] = torch.tensor(stats.temperatures, dtype=torch.float64)
    if stats.maps is not None:
        tensors["maps"] = stats.maps.contiguous()
    metadata = {
        "meta": json.dumps(stats.meta),
        "ids": json.dumps(stats.ids),
        "classes": json.dumps(stats.classes),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_statistics(path: Path, key: str | None = None, ids: list[str] | None = None) -> ClassStatistics:
    """Read a cache file; refuse (one line) a file that is not what ``key`` / ``ids`` describe."""
    from safetensors import safe_open

    stale = f"cache file {path} is stale or damaged"
    fix = "delete it or re-run with --recompute"
    try:
        with safe_open(str(path), framework="pt") as fh:
            md = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        meta = json.loads(md["meta"])
        stats = ClassStatistics(
            ids=json.loads(md["ids"]),
            classes=json.loads(md["classes"]),
            temperatures=tuple(float(t) for t in tensors.pop("temperatures").tolist()),
            maps=tensors.pop("maps", None),
            meta=meta,
            **{name: tensors[name] for name in _TENSORS},
        )
    except Exception as exc:  # any corruption: safetensors header, JSON, missing tensor
        raise CSRAError(f"{stale} ({type(exc).__name__}); {fix}") from None
    if key is not None and meta.get("key") != key:
        raise CSRAError(f"{stale} (its key does not match the run); {fix}")
    n, c = len(stats.ids), len(stats.classes)
    shapes_ok = all(getattr(stats, name).shape[:2] == (n, c) for name in _TENSORS)
    if not shapes_ok or (ids is not None and stats.ids != ids):
        raise CSRAError(f"{stale} (its images or shapes differ from the dataset's); {fix}")
    return stats
