"""The resolution memo: what building a model resolved to, so a cached run need not build it again.

A cached sweep needs the statistics cache key, and the key needs the weights' content hash, the
head's hash and the model's data config: things only a built model (timm, a probe fit) can say.
After a real build they are written here, keyed by what identifies the weights source cheaply
(checkpoint path, size and mtime; the packaged weights file's stamp; or random init), the head
choice and the probe's settings and training data. A later run with the same memo key and an
existing statistics file computes the key from the memo and goes straight to the sweep: no
timm, torchvision or scikit-learn import, no forward pass.

Hub weights (``--pretrained`` without packaged weights) have no cheap identity, so they always build.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..data.decode import decode_key
from ..data.transforms import transform_description
from ..defaults import CACHED_TEMPERATURES
from ..extraction.test_pool import resolve_test_pool
from ..models.base import DataConfig, ModelAdapter
from ..models.checkpoint import state_dict_fingerprint
from ..models.hf_models import source_files
from ..models.offline_weights import offline_weights_path
from ..options import ExtractOptions, amp_precision
from ..version import __version__
from .keys import statistics_key
from .store import cache_key, cache_path

MEMO_FORMAT = 1


@dataclass
class Resolution:
    """What a model build computed that the statistics key and the report need."""

    name: str
    family: str
    baseline_source: str
    weights: str
    weights_fingerprint: str
    head_fingerprint: str
    head: str
    data_config: dict[str, Any]  # input_size, mean, std, interpolation, crop_pct, crop_mode
    notes: list[str] = field(default_factory=list)
    location_head: str = "linear"


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "none"


def weights_source_stamp(
    model: str, checkpoint: str | Path | None, pretrained: bool, random_init: bool, num_classes: int | None
) -> dict[str, Any] | None:
    """A cheap identity of the weights a build would load, or None when there is none (hub weights)."""
    if model.startswith("hf:") and checkpoint is None and not random_init:  # its folder: config, preprocessing, weights
        return {"hf": [_stamp(f) for f in source_files(model)], "transformers": _version("transformers")}
    if checkpoint is not None:
        return {"checkpoint": _stamp(Path(checkpoint))}
    if random_init:
        return {"random_init": True, "num_classes": num_classes}
    if pretrained and not model.startswith("torchvision:"):
        packaged = offline_weights_path(model)
        if packaged is not None:
            return {"packaged": _stamp(packaged)}
    return None


def resolution_key(model: str, stamp: dict[str, Any], head: str, probe: dict[str, Any] | None) -> str:
    """Memo key: the weights source, the head choice, the probe's settings, and the code versions
    that turn them into fingerprints (a new timm may build the same name differently)."""

    return cache_key(
        {
            "kind": "resolution",
            "memo_format": MEMO_FORMAT,
            "model": model,
            "weights_source": stamp,
            "head": head,
            "probe": probe,
            "versions": {
                "csra_posthoc": __version__,
                "timm": _version("timm"),
                "torch": _version("torch"),
                "torchvision": _version("torchvision"),
            },
        }
    )


def probe_settings(c: float, train_fingerprint: str, options: ExtractOptions) -> dict[str, Any]:
    """What a probe fit depends on besides the backbone (it sees the training split's transform)."""
    decode = (
        {} if options.decode == "pil" else {"decode": options.decode}
    )  # pil: memo keys written before decode existed stay valid
    return {
        "c": c,
        "train": train_fingerprint,
        "img_size": options.img_size,
        "transform": options.transform,
        "amp": options.amp,
        "amp_dtype": options.amp_dtype,
        **decode,
    }


def memo_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "resolved" / f"{key}.json"


def read_memo(cache_dir: Path, key: str) -> Resolution | None:
    """The memo, or None when absent or unreadable (then the model is built as usual)."""
    try:
        data = json.loads(memo_path(cache_dir, key).read_text())
        if data.pop("memo_format", None) != MEMO_FORMAT:
            return None
        return Resolution(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_memo(cache_dir: Path, key: str, resolution: Resolution) -> None:
    """Atomically; a memo that cannot be written only costs the next run a model build."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump({"memo_format": MEMO_FORMAT, **asdict(resolution)}, fh, indent=1)

    try:
        atomic_write(memo_path(cache_dir, key), write)
    except OSError:
        pass


def resolution_of(adapter: ModelAdapter) -> Resolution:
    """What to memo from a built (and, for a probe, fitted) adapter."""

    info = adapter.info
    return Resolution(
        name=info.name,
        family=info.family,
        baseline_source=info.baseline_source,
        weights=info.weights,
        weights_fingerprint=info.weights_fingerprint,
        head_fingerprint=state_dict_fingerprint(adapter.head.state_dict()),
        head=info.head,
        data_config=asdict(adapter.data_config),
        notes=list(info.notes),
        location_head=info.location_head,
    )


def _device_type(device: str) -> str:
    """cpu or cuda, as the extraction would resolve ``device`` (the amp dtype depends on it)."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def _test_pool_key(options: ExtractOptions, input_size: int, model_input_size: int) -> int | None:

    setting = resolve_test_pool(options.test_pool, options.train_size, input_size, model_input_size)
    return setting.key() if setting is not None else None


def statistics_location(resolution: Resolution, images, options: ExtractOptions, cache_dir: Path) -> tuple[str, Path]:
    """The statistics key and cache file a build with this resolution would use (no model needed)."""

    cfg = resolution.data_config
    config = DataConfig(**{**cfg, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])})
    transform = transform_description(config, options.img_size, images.single_label, options.transform)
    transform = decode_key(options.decode, transform)
    key = statistics_key(
        model=resolution.name,
        weights_fingerprint=resolution.weights_fingerprint,
        head_fingerprint=resolution.head_fingerprint,
        baseline_source=resolution.baseline_source,
        transform=transform,
        dataset=images.dataset,
        split=images.split,
        data_fingerprint=images.fingerprint(content=options.verify_images),
        temperatures=CACHED_TEMPERATURES,
        amp=amp_precision(options, _device_type(options.device)) or False,
        keep_maps=options.keep_maps,
        cache_dtype=options.cache_dtype,
        location_head=resolution.location_head,
        test_pool=_test_pool_key(options, int(transform["size"]), int(cfg["input_size"])),
    )
    return key, cache_path(cache_dir, resolution.name, images.dataset, images.split, key)
