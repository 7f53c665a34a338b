"""On-disk cache of :class:`ClassStatistics`: one safetensors file per key, written atomically.

The key hashes everything that changes the numbers: the weights (content hash), the head, the
transform, the image files and labels, the cached temperatures and AMP. A half-written file is
never visible under its final name (write to a temporary file, then ``os.replace``).

Opening the cache (:func:`open_cache_dir`) checks that the folder can be written (a run that
cannot cache still prints and writes its results) and removes temporary files orphaned by
killed runs; :func:`key_lock` keeps two identical runs from extracting the same statistics.

Module state: :func:`usable_cache_dir` warns about an unwritable cache folder once per folder and
process (``_warned_cache_dirs``), so a run's probe and extraction print one warning; a library
user who fixes the folder's permissions in the same process is not warned again, and gets
caching back as soon as the folder can be written (the check itself is repeated every time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from rich.console import Console

from ..atomic import atomic_write, remove_stale_temps
from ..errors import CSRAError, first_line
from ..extraction.statistics import ClassStatistics, StatisticsInfo
from ..log import say
from ..text import safe

CACHE_FORMAT = 1  # enters every cache key (bump it to re-key every entry)
CACHE_VERSION = (
    3  # the file layout, stored in each file and checked on reading (1: files without the field; 2: no argmax)
)
VERSION_FIELD = "csra_cache_version"
RECOMPUTE_FIX = "delete it or re-run with recompute=True"
T = TypeVar("T")
_TENSORS = ("labels", "avg", "max", "attn", "logits")
_FLOATS = ("avg", "max", "attn", "logits")  # stored in ``info.cache_dtype``, read back as float32
ORPHAN_AGE_S = 24 * 3600  # a temporary file this old belongs to no live run


def default_cache_dir() -> Path:
    """``$CSRA_POSTHOC_CACHE`` or the user's cache directory."""
    env = os.environ.get("CSRA_POSTHOC_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("csra-posthoc"))


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """``--cache-dir`` when given, else :func:`default_cache_dir`."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def open_cache_dir(cache_dir: Path) -> str | None:
    """Create ``cache_dir``, check it by writing a probe file, and remove orphaned temporary files.

    Returns why the folder cannot be used (one short phrase), or None when it can.
    """
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        return "it is a file, not a directory"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".write-check.", suffix=".probe"):
            pass
    except OSError as exc:
        return (exc.strerror or first_line(exc, 120)).lower()
    remove_orphans(cache_dir)
    return None


def remove_orphans(cache_dir: Path, max_age_s: float = ORPHAN_AGE_S) -> list[Path]:
    """Delete ``.<name>.<random>.tmp`` files (atomic_write's) older than ``max_age_s``: a run
    killed hard (SIGKILL, power loss) leaves one behind; a live run's is younger."""
    removed = remove_stale_temps(cache_dir)  # temporaries whose writing process is gone: at once, not after max_age_s
    now = time.time()
    for tmp in Path(cache_dir).glob(".*.tmp"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # another run removed it, or it is not ours to remove
    return removed


@contextmanager
def key_lock(path: Path, on_wait: Callable[[Path], None]) -> Iterator[None]:
    """Hold an exclusive lock on ``<cache file>.lock`` while extracting; ``on_wait(lock)`` is called
    once if another run holds it. The holder deletes the lock file on release (a waiter that then
    finds its file gone takes a fresh one), so the cache keeps no lock files. Without ``fcntl``
    (Windows) or on a filesystem without locks, no lock is taken."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = path.with_suffix(".lock")
    waited = False
    while True:
        try:
            fh = open(lock, "a")
        except OSError:
            yield
            return
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    on_wait(lock)
                    waited = True
                fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # no locking here (some network mounts)
            fh.close()
            yield
            return
        except BaseException:
            fh.close()
            raise
        try:
            if os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino:
                break  # we hold the lock on the file that is still there
        except FileNotFoundError:
            pass
        fh.close()  # the previous holder deleted it while we waited: lock the next one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        fh.close()  # closing releases the lock


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(cache_dir: Path, model: str, dataset: str, split: str, key: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}-{dataset}-{split}")
    return Path(cache_dir) / f"{slug}-{key}.safetensors"


def write_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The one cache writer: safetensors with string metadata plus the format version, written
    atomically (a crash or Ctrl-C leaves no file under ``path``)."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous() for name, t in tensors.items()}
    metadata = {**metadata, VERSION_FIELD: str(CACHE_VERSION)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_entry(path: Path, what: str = "cache file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The one cache reader: tensors and metadata of a file :func:`write_entry` wrote.

    A damaged file, or one written in another format version (older releases wrote none), is
    refused in one line telling to recompute: never misread.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # not safetensors, truncated
        raise CSRAError(
            f"{what} {path} is stale or damaged ({type(exc).__name__}); {RECOMPUTE_FIX}", param="recompute"
        ) from None
    version = metadata.get(VERSION_FIELD)
    if version != str(CACHE_VERSION):
        written = f"format version {version}" if version else "an older format (no version)"
        raise CSRAError(
            f"{what} {path} is in {written}, this release reads version {CACHE_VERSION}; {RECOMPUTE_FIX}",
            param="recompute",
        )
    return tensors, metadata


def save_statistics(stats: ClassStatistics, path: Path) -> None:
    """Statistics as a cache entry (see :func:`write_entry`); the float statistics in
    ``stats.info.cache_dtype`` (float16: half the file; maps are float16 always)."""
    tensors = {name: getattr(stats, name) for name in _TENSORS}
    if stats.info.cache_dtype == "float16":
        tensors.update({name: tensors[name].half() for name in _FLOATS})
    tensors["temperatures"] = torch.tensor(stats.temperatures, dtype=torch.float64)
    if stats.maps is not None:
        tensors["maps"] = stats.maps
    if stats.argmax is not None:
        tensors["argmax"] = stats.argmax
    if stats.test_pool is not None:
        tensors["test_pool"] = stats.test_pool.half() if stats.info.cache_dtype == "float16" else stats.test_pool
    metadata = {
        "meta": json.dumps(stats.info.to_json()),
        "ids": json.dumps(stats.ids),
        "classes": json.dumps(stats.classes),
    }
    write_entry(path, tensors, metadata)


def load_statistics(path: Path, key: str | None = None, ids: list[str] | None = None) -> ClassStatistics:
    """Read a cache file; refuse (one line) a file that is not what ``key`` / ``ids`` describe."""
    stale = f"cache file {path} is stale or damaged"
    tensors, md = read_entry(path)
    try:
        info = StatisticsInfo.from_json(json.loads(md["meta"]))
        stats = ClassStatistics(
            ids=json.loads(md["ids"]),
            classes=json.loads(md["classes"]),
            temperatures=tuple(float(t) for t in tensors.pop("temperatures").tolist()),
            maps=tensors.pop("maps", None),
            argmax=tensors.pop("argmax", None),
            test_pool=tensors["test_pool"].float() if "test_pool" in tensors else None,
            info=info,
            **{name: tensors[name].float() if name in _FLOATS else tensors[name] for name in _TENSORS},
        )
    except Exception as exc:  # any corruption: JSON, missing tensor
        raise CSRAError(f"{stale} ({type(exc).__name__}); {RECOMPUTE_FIX}", param="recompute") from None
    if key is not None and info.key != key:
        raise CSRAError(f"{stale} (its key does not match the run); {RECOMPUTE_FIX}", param="recompute")
    n, c = len(stats.ids), len(stats.classes)
    shapes_ok = all(getattr(stats, name).shape[:2] == (n, c) for name in _TENSORS)
    shapes_ok = shapes_ok and (stats.argmax is None or tuple(stats.argmax.shape) == (n, c))
    shapes_ok = shapes_ok and (stats.test_pool is None or tuple(stats.test_pool.shape) == (n, c))
    if not shapes_ok or (ids is not None and stats.ids != ids):
        raise CSRAError(f"{stale} (its images or shapes differ from the dataset's); {RECOMPUTE_FIX}", param="recompute")
    return stats


_warned_cache_dirs: set[str] = set()  # the probe and the extraction of one run share the warning


def usable_cache_dir(cache_dir: Path, console: Console | None) -> bool:
    """True when the cache folder can be written; otherwise a warning (once per folder and process:
    see the module's docstring), and the run goes on uncached."""
    problem = open_cache_dir(cache_dir)
    if problem is not None and str(cache_dir) not in _warned_cache_dirs:
        _warned_cache_dirs.add(str(cache_dir))
        say(
            console,
            f"[yellow]warning:[/] cache dir {safe(cache_dir)} is not writable ({safe(problem)}): going on without caching",
            logging.WARNING,
        )
    return problem is None


@dataclass
class CacheOutcome(Generic[T]):
    """A value, and where it came from: ``path`` None when it was not cached."""

    value: T
    path: Path | None
    reused: bool


def cached(
    path: Path,
    *,
    use_cache: bool,
    recompute: bool,
    load: Callable[[Path], T],
    compute: Callable[[], T],
    save: Callable[[T, Path], None],
    console: Console | None,
    waiting_for: str,
    file_label: str,
) -> CacheOutcome[T]:
    """The one cache policy, for statistics and probes alike: reuse ``path`` when it exists (reading
    needs no write access), else compute under the key's lock (a run we waited for may have written
    it) and save; a folder or a write that fails is a warning and the value is returned uncached."""
    cache_dir = path.parent
    if use_cache and not recompute and path.is_file():
        remove_orphans(cache_dir)
        return CacheOutcome(load(path), path, True)
    if not (use_cache and usable_cache_dir(cache_dir, console)):
        return CacheOutcome(compute(), None, False)

    def waiting(lock: Path) -> None:
        say(console, f"[yellow]waiting for another run {safe(waiting_for)}[/] (lock {safe(lock)})")

    with key_lock(path, waiting):
        if not recompute and path.is_file():
            return CacheOutcome(load(path), path, True)
        value = compute()
        try:
            save(value, path)
        except OSError as exc:
            say(
                console,
                f"[yellow]warning:[/] could not write the {file_label} {safe(path)} ({safe(first_line(exc, 120))}): going on without caching",
                logging.WARNING,
            )
            return CacheOutcome(value, None, False)
    return CacheOutcome(value, path, False)
