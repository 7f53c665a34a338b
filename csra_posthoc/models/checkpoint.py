"""Read a local checkpoint safely (``weights_only=True`` / safetensors) into a flat state_dict.

Training checkpoints are unwrapped the way timm reads them (``timm.models.load_state_dict``):
EMA weights (``state_dict_ema``, ``model_ema``) when the file has them, else ``state_dict`` /
``model`` / ...; wrapper prefixes are removed with timm's ``clean_state_dict``. Which entry was
used is returned, so the report can say it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import CSRAError, first_line

EMA_KEYS = ("state_dict_ema", "model_ema")  # preferred, as timm does
_WRAPPER_KEYS = (*EMA_KEYS, "state_dict", "model", "model_state_dict", "module", "net")
_PREFIXES = ("model.",)  # after timm's clean_state_dict (module., _orig_mod.): a whole-model wrapper
_DAMAGED = (
    "PytorchStreamReader failed",
    "pickle data was truncated",
    "Ran out of input",
    "unexpected EOF",
)  # torch.load on a cut file


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """A checkpoint's state_dict and the entry it came from (``'state_dict_ema'``, ``'state_dict'``,
    ``'model'``, ...; nested ones joined by ``/``), or None for a bare state_dict."""
    from timm.models import clean_state_dict

    path = Path(path)
    if path.is_dir():
        raise CSRAError(f"checkpoint {path}: is a directory, not a checkpoint file", param="checkpoint")
    if not path.is_file():
        raise CSRAError(f"checkpoint {path}: no such file", param="checkpoint")
    resave = "save it with torch.save(model.state_dict(), ...) or as .safetensors"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CSRAError(
                f"checkpoint {path}: not a readable .safetensors file ({first_line(exc)}); it is damaged or truncated: download or save it again",
                param="checkpoint",
            ) from None
    else:
        try:
            with warnings.catch_warnings():  # the unpickler's protocol chatter; a failure is reported below
                warnings.simplefilter("ignore", UserWarning)
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
            model_class = pickled_module_class(path)
            if model_class is not None:
                raise CSRAError(
                    f"checkpoint {path}: holds a pickled model object ({model_class}), not a state_dict: save model.state_dict() or .safetensors",
                    param="checkpoint",
                ) from None
            if isinstance(exc, EOFError) or any(m in str(exc) for m in _DAMAGED):
                raise CSRAError(
                    f"checkpoint {path}: damaged or truncated ({first_line(exc)}); download or save it again",
                    param="checkpoint",
                ) from None
            raise CSRAError(
                f"checkpoint {path}: cannot be read as weights only ({first_line(exc)}); {resave}", param="checkpoint"
            ) from None
    used: list[str] = []
    for _ in range(3):
        if isinstance(obj, dict):
            key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if key is not None:
                obj = obj[key]
                used.append(key)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CSRAError(f"checkpoint {path}: holds no state_dict of tensors", param="checkpoint")
    sd: dict[str, torch.Tensor] = clean_state_dict(dict(obj))
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd, "/".join(used) or None


@contextlib.contextmanager
def weights_only_downloads() -> Iterator[None]:
    """torchvision's ``weights.get_state_dict`` reads its cached download (``$TORCH_HOME/hub/checkpoints``)
    with ``torch.hub.load_state_dict_from_url``, whose default is ``weights_only=False``: a file
    planted there would run code. Within this block torchvision loads weights only."""
    from torchvision.models import _api

    original = _api.load_state_dict_from_url
    _api.load_state_dict_from_url = functools.partial(original, weights_only=True)
    try:
        yield
    finally:
        _api.load_state_dict_from_url = original


def checkpoint_note(entry: str | None) -> str | None:
    """The report line saying which weights of a training checkpoint were used (None for a bare state_dict)."""
    if entry is None:
        return None
    ema = entry.split("/")[0] in EMA_KEYS
    return f"checkpoint: {'EMA weights' if ema else 'weights'} from its '{entry}' entry" + (
        " (preferred over the raw weights, as timm does)" if ema else ""
    )


def pickled_module_class(path: Path) -> str | None:
    """The class of a pickled ``nn.Module`` inside a ``torch.save`` zip, read without unpickling.

    ``torch.save(model, ...)`` pickles the module object, whose state carries ``_modules`` and
    ``_parameters``; weights-only loading refuses it with a long message about allow-listing
    globals, which is the wrong advice here. Returns None for anything else (or an unreadable file).
    """
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return None
            data = zf.read(name)
        strings: list[str] = []
        first_class = None
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            elif op.name == "GLOBAL" and first_class is None:
                first_class = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and first_class is None and len(strings) >= 2:
                first_class = f"{strings[-2]}.{strings[-1]}"
    except Exception:  # not a zip, truncated, not a pickle: the caller's generic message applies
        return None
    if "_modules" in strings and "_parameters" in strings:
        return first_class or "an nn.Module"
    return None


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


def published_layout(arch: str, sd: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """``sd`` renamed to timm's keys where it is in the layout of a model's original code and timm
    ships the mapping for it, with the report line saying so (None: ``sd`` is returned as it was).

    TResNet (``timm.models.tresnet.checkpoint_filter_fn``): the checkpoints of the ASL and
    ML-Decoder projects (``{'model': state_dict}`` of their TResNet code: ``conv1.0`` / ``conv1.1``
    for conv / inplace-ABN, ``conv2.0.0`` with anti-aliasing, ``downsample.N.0``; 80 COCO or 9605
    Open Images classes with the ASL head ``head.fc``). ML-Decoder's own head (``head.decoder.*``,
    cross-attention over the feature map) has no per-location linear classifier: refused in one line.
    """
    import timm

    if (
        timm.models.model_entrypoint(arch).__module__ != "timm.models.tresnet"
        or "body.conv1.conv.weight" in sd
        or "body.conv1.0.weight" not in sd
    ):
        return sd, None
    if "head.fc.weight" not in sd and any(k.startswith("head.") for k in sd):
        example = next(k for k in sd if k.startswith("head."))
        raise CSRAError(
            f"checkpoint {path}: its head ({example}, ...) is not TResNet's linear head.fc (ML-Decoder's cross-attention head?), so it has no "
            "classifier to apply per location; the ASL checkpoints (head.fc) load",
            param="checkpoint",
        )
    from timm.models.tresnet import checkpoint_filter_fn

    # the anti-alias blur of their non-JIT Downsample is a stored buffer ('.filt'); timm's BlurPool2d
    # computes the same fixed binomial filter and does not store it
    learned = {k: v for k, v in sd.items() if not k.endswith(".filt")}
    renamed = checkpoint_filter_fn(learned, None)
    return (
        renamed,
        "checkpoint: TResNet weights in the ASL code's layout, renamed by timm's tresnet checkpoint_filter_fn (inplace-ABN weights as |w| + 1e-5)",
    )
