"""Read a local checkpoint safely (``weights_only=True`` / safetensors) into a flat state_dict."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from .errors import CSRAError, first_line

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, unwrapped from ``{'state_dict': ...}``-style dicts and ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise CSRAError(f"--checkpoint {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CSRAError(
            f"--checkpoint {path}: cannot be read as weights only ({first_line(exc)}); "
            "save it with torch.save(model.state_dict(), ...) or as .safetensors"
        ) from None
    for _ in range(3):
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CSRAError(f"--checkpoint {path}: holds no state_dict of tensors")
    sd: dict[str, torch.Tensor] = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def state_dict_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a model's weights: keys the cache, whatever the weights came from."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
