"""The probe head a results JSON was measured with, found by its ``head_fingerprint``.

A sweep (or the demo) with a linear probe records the probe's fingerprint
(``checkpoint.state_dict_fingerprint`` of the head, as the statistics' key has it) and, when it
was saved with ``save_head``, the file (``"head_file"``). ``apply`` / ``predict`` / ``attention``
with ``from_results`` and no ``head_file`` look the head up here, in this order: the recorded
``head_file``, ``*.safetensors`` beside the results file, then the probe cache
(``probe-*.safetensors`` under the cache dir, written in the same head format). Only
safetensors files are opened, and only the ones holding a head's four tensors are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache.store import resolve_cache_dir
from ..errors import CSRAError
from ..models.checkpoint import state_dict_fingerprint
from ..text import safe
from .head_file import head_from

if TYPE_CHECKING:
    from ..report.results_file import ResultsFile

HEAD_TENSORS = frozenset({"weight", "bias", "norm_weight", "norm_bias"})


def head_file_fingerprint(path: Path) -> str | None:
    """The fingerprint of the head in ``path`` (a ``save_head`` / probe cache file), None when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            if set(fh.keys()) != HEAD_TENSORS or "meta" not in metadata:
                return None
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        head, _ = head_from(tensors, metadata)
        return state_dict_fingerprint(head.state_dict())
    except Exception:  # not safetensors, damaged, not a head: not the one
        return None


def _candidates(results: ResultsFile, results_path: Path, cache_dir: Path | None) -> Iterator[Path]:
    if results.head_file:
        yield Path(results.head_file)
    beside = Path(results_path).resolve().parent
    yield from sorted(beside.glob("*.safetensors"))
    if cache_dir is not None:
        yield from sorted(Path(cache_dir).glob("probe-*.safetensors"), key=lambda p: -p.stat().st_mtime)


def find_results_head(results: ResultsFile, results_path: Path, cache_dir: Path | None = None) -> Path | None:
    """The probe head file ``results`` (read from ``results_path``) was measured with; None for the model's own head.

    Raises one line saying where it looked when the probe is nowhere to be found.
    """
    if not results.uses_probe:
        return None
    wanted = results.head_fingerprint
    seen: set[Path] = set()
    for path in _candidates(results, Path(results_path), cache_dir):
        try:
            key = path.resolve()
        except OSError:
            continue
        if key in seen or not key.is_file():
            continue
        seen.add(key)
        if head_file_fingerprint(key) == wanted:
            return key
    places = [
        "its recorded head_file" if results.head_file else None,
        f"*.safetensors beside it ({Path(results_path).resolve().parent})",
    ]
    if cache_dir is not None:
        places.append(f"the probe cache ({cache_dir})")
    raise CSRAError(
        f"from_results {results_path}: measured with a probe ({results.head}, fingerprint {str(wanted)[:12]}) found in none of "
        f"{', '.join(p for p in places if p)}; pass it as `head_file`, or run the demo / sweep again with `save_head`",
        param="from_results",
    )


def found_head_line(path: Path) -> str:
    """The one line apply / predict / attention print for a head found by :func:`find_results_head`."""

    return f"head: {safe(path)} (found by the results' head fingerprint)"


def results_head_file(
    head_file: str | Path | None, results: ResultsFile, results_path: str | Path, console: Any
) -> str | Path | None:
    """The head a results file was measured with: ``head_file`` as given, else the one
    :func:`find_results_head` finds (in the default cache too), announced on ``console``."""
    if head_file is not None:
        return head_file

    found = find_results_head(results, Path(str(results_path)), resolve_cache_dir(None))
    if found is not None:
        console.print(found_head_line(found), soft_wrap=True, highlight=False)
    return found
