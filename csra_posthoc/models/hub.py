"""Hub weights (``--pretrained``) without a network: decide once, then fail in one line.

Without this, timm's download of a hub model retries for most of a minute when there is no
network. Here the hub is asked once (one TCP connection with a short timeout, no retries) unless
``HF_HUB_OFFLINE`` already says; when it does not answer, that is remembered, a model whose weights
are in no local cache is refused before anything is built, and the model factory builds the others
with the Hugging Face client in offline mode (:func:`offline_if_unreachable`) -- for that call
only: nothing process-wide (no environment variable, no socket default timeout) is left changed.

Module state a library user should know of: ``_unreachable`` remembers, for the rest of the
process, each hub endpoint that did not answer (a network that comes back later in the same
process is not asked again: start a new process). While :func:`offline_if_unreachable`'s block
runs, ``os.environ["HF_HUB_OFFLINE"]`` and ``huggingface_hub.constants.HF_HUB_OFFLINE`` are set
process-wide (other threads see them) and restored when it ends.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from ..defaults import TORCHVISION_PREFIX
from ..errors import CSRAError
from .offline_weights import has_offline_weights

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}
_unreachable: dict[str, str] = {}  # hub endpoint -> why it cannot be used, decided once per process


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_answers(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One connection attempt to the hub's host; the name look-up is bounded by ``timeout`` too."""
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    answered: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answered)


def offline_reason() -> str | None:
    """Why the hub cannot be used (``HF_HUB_OFFLINE`` set, or no answer), or None when it answers.

    A hub that did not answer is not asked again in this process.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    endpoint = hub_endpoint()
    if endpoint not in _unreachable:
        if hub_answers(endpoint):
            return None
        _unreachable[endpoint] = f"{urlparse(endpoint).hostname} cannot be reached"
    return _unreachable[endpoint]


@contextmanager
def offline_if_unreachable() -> Iterator[None]:
    """The Hugging Face client in offline mode (so it never retries) while the block runs, when this
    process found the hub unreachable; the environment and the client's setting are restored after."""
    if not _unreachable or hub_endpoint() not in _unreachable:
        yield
        return
    from huggingface_hub import constants

    env, setting = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # read at call time by the client
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = setting
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def cached_weights(arch: str) -> Path | None:
    """A local copy of timm's hub weights for ``arch`` (Hugging Face cache or torch hub cache), or None."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        for name in filter(None, [cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        import torch.hub

        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(str(cfg.url)).path).name
        if local.is_file():
            return local
    return None


def require_reachable_weights(name: str) -> None:
    """``--pretrained`` for ``name``: only timm hub weights need the network (packaged weights and
    torchvision's downloader are left to :func:`csra_posthoc.load_model`); refuse them early when unreachable."""
    if not name.startswith(TORCHVISION_PREFIX) and not has_offline_weights(name):
        require_hub_weights(name)


def require_hub_weights(arch: str) -> None:
    """Refuse ``--pretrained`` for a timm model whose weights cannot be had: no network, no local copy."""
    import timm

    if not timm.is_model(arch):
        return  # load_model names the unknown model
    reason = offline_reason()
    if reason is None or cached_weights(arch) is not None:
        return
    from huggingface_hub import constants

    raise CSRAError(
        f"model {arch} pretrained=True: no network ({reason}) and its weights are in no local cache; "
        f"pass `checkpoint` (a weights file), or fetch them once with a network into the Hugging Face cache ({constants.HF_HUB_CACHE})",
        param="model",
    )
