"""The one output policy of every command (README: Outputs), checked before any model or data work.

* An existing output file is replaced atomically (:func:`csra_posthoc.atomic.atomic_write`);
  no command asks for ``force`` (``apply`` still accepts it).
* A run never writes to one of its own inputs: outputs are compared with every input file
  (checkpoint, head file, label CSVs, results JSON read, patched file, images, ...) by resolved
  path (symlinks followed) and by ``os.path.samefile`` (hard links).
* A run never names one path for two outputs.
* Each output needs its documented suffix (:data:`OUTPUT_SUFFIXES`).

Folders given as inputs (``data_dir``, ``image_dir``, an image folder) may hold outputs, unless the
output IS one of the files the run reads there (an image or an annotation file: checked against
the loaded file lists by :func:`check_outputs_not_read`). The cache folder's own files (its
``.safetensors`` statistics, ``resolved/`` memos, ``demo-data/``) are never an output.
Messages name the Python parameters; the CLI names the flags.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .atomic import remove_stale_temps
from .defaults import FIGURE_FORMATS
from .errors import CSRAError


def check_output_path(path: str | Path | None, param: str) -> None:
    """Refuse an output file that cannot be written, before the work that produces it starts.

    The file is written atomically (temporary file beside it, then rename), so what matters is the
    folder: the nearest existing ancestor must be a writable folder, and the target not a folder.
    """
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CSRAError(
            f"{param} {target}: is a directory; give a file name inside it, e.g. {target / 'results.json'}", param=param
        )
    ancestor = target.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CSRAError(f"{param} {target}: {ancestor} is a file, not a folder; choose another path", param=param)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CSRAError(f"{param} {target}: folder {ancestor} is not writable; choose another path", param=param)


# The documented suffix of each output parameter. ``out`` differs by command, so it is passed
# explicitly there (sweep / demo: .json; apply: the export formats; attention: a figure).
OUTPUT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "save_scores_to": (".npz",),
    "save_head": (".safetensors",),
    "plot": FIGURE_FORMATS,
    "plot_classes": FIGURE_FORMATS,
    "json_out": (".json",),
    "csv_out": (".csv",),
    "markdown_out": (".md",),
    "latex_out": (".tex",),
}
RESULTS_SUFFIXES: tuple[str, ...] = (".json",)  # sweep / demo ``out``
CACHE_SUBFOLDERS = ("resolved", "demo-data")  # the cache's own folders (memos, demo mosaics)

PathLike = str | Path
InputValue = PathLike | Sequence[PathLike] | None


def check_suffix(path: PathLike, param: str, suffixes: Sequence[str]) -> None:
    """``path`` ends in one of ``suffixes`` (case-insensitive), else one line listing them."""
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        raise CSRAError(
            f"{param} {path}: give a file ending in {', '.join(suffixes)} (not {suffix or 'no suffix'!r})", param=param
        )


def _resolved(path: PathLike) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare what we can
        return Path(os.path.abspath(path))


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path (symlinks followed), or, when
    both exist, the same inode (hard links)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _files(value: InputValue) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def _describe(param: str) -> str:
    return f"`{param}`"


def check_outputs(
    outputs: Mapping[str, PathLike | None],
    inputs: Mapping[str, InputValue] | None = None,
    *,
    suffixes: Mapping[str, Sequence[str]] | None = None,
    cache_dir: PathLike | None = None,
    require_suffixes: bool = True,
) -> None:
    """Refuse, in one line naming both parameters, an output that is an input, a second output,
    inside the cache's own files, or has the wrong suffix or an unwritable folder.

    ``outputs``: parameter -> path (None: not written). ``inputs``: parameter -> a file, a list of
    files, or a folder (an output inside an input folder is fine; :func:`check_outputs_not_read`
    checks the files read there once they are known). ``suffixes``: parameter -> allowed suffixes
    where :data:`OUTPUT_SUFFIXES` has none (``out``); ``require_suffixes`` False: no suffix check
    (an option object checks its paths early; the command's full check follows). Stale temporaries of dead runs beside each
    output are removed (:func:`csra_posthoc.atomic.remove_stale_temps`).
    """
    given = {param: Path(path) for param, path in outputs.items() if path is not None}
    allowed = {**OUTPUT_SUFFIXES, **(suffixes or {})}
    for param, path in given.items():
        check_output_path(path, param)
    names = list(given)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if same_file(given[first], given[second]):
                raise CSRAError(
                    f"{second} {given[second]}: is also {_describe(first)}; give each output its own path", param=second
                )
    for in_param, value in (inputs or {}).items():
        for source in _files(value):
            if source.is_dir():
                continue  # a folder: outputs may live in it (check_outputs_not_read checks the files read)
            for param, path in given.items():
                if same_file(path, source):
                    raise CSRAError(
                        f"{param} {path}: is also {_describe(in_param)} (an input of this run); choose another path",
                        param=param,
                    )
    if cache_dir is not None:
        _check_not_cache_file(given, Path(cache_dir))
    for param, path in given.items():  # after the clashes: "is also `labels`" says more than a suffix would
        if require_suffixes and param in allowed:
            check_suffix(path, param, allowed[param])
    for path in given.values():
        if path.absolute().parent.is_dir():
            remove_stale_temps(path.absolute().parent)


def _check_not_cache_file(given: Mapping[str, Path], cache_dir: Path) -> None:
    root = _resolved(cache_dir)
    for param, path in given.items():
        target = _resolved(path)
        if not target.is_relative_to(root):
            continue
        inside = target.relative_to(root).parts
        if not inside:
            continue
        if (target.suffix.lower() == ".safetensors" and len(inside) == 1) or (
            inside[0] in CACHE_SUBFOLDERS and len(inside) > 1
        ):
            raise CSRAError(
                f"{param} {path}: is in the cache folder {cache_dir}'s own files; choose another path", param=param
            )


def check_outputs_not_read(outputs: Mapping[str, PathLike | None], read: Mapping[str, Iterable[PathLike]]) -> None:
    """Refuse an output that is one of the files a run reads from its input folders (``read``:
    parameter -> the loaded images / annotation files), before the model is built. Cheap on large
    sets: only files with an output's name are resolved."""
    given = {param: Path(path) for param, path in outputs.items() if path is not None}
    if not given:
        return
    names = {path.name for path in given.values()} | {_resolved(path).name for path in given.values()}
    for in_param, files in read.items():
        for source in files:
            source = Path(source)
            if source.name not in names:
                continue
            for param, path in given.items():
                if same_file(path, source):
                    raise CSRAError(
                        f"{param} {path}: is one of the files read from {_describe(in_param)} (an input of this run); choose another path",
                        param=param,
                    )
