"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file under the final name.

The temporary file beside the output is recognisable: ``.<name>.csra-<host>-<pid>-<random>.tmp``
(``<host>``: 8 hex digits of the machine's name). A run killed hard (SIGKILL, SIGTERM, power loss)
leaves it behind; the next write into that folder removes the temporaries whose process is gone
(:func:`remove_stale_temps`), never a live run's.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TEMP_TAG = "csra"
FOREIGN_TEMP_AGE_S = 24 * 3600.0  # another machine's temporary (a shared folder): its process cannot be asked
_TEMP_NAME = re.compile(rf"^\..*\.{TEMP_TAG}-(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-[^.]*\.tmp$")
MAX_NAME_CHARS = 120  # of the output's name inside the temporary's (file names stop at 255 bytes)


def host_tag() -> str:
    """8 hex digits naming this machine in temporary file names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_prefix(path: Path) -> str:
    """The temporary file name's start for ``path``, with this process's id."""
    return f".{path.name[:MAX_NAME_CHARS]}.{TEMP_TAG}-{host_tag()}-{os.getpid()}-"


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine (another user's process counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep its file
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete this package's temporaries in ``folder`` whose writing process is gone: on this
    machine its pid no longer runs; from another machine (a shared folder), older than
    :data:`FOREIGN_TEMP_AGE_S`. A live run's temporary, and any other file, is left alone."""
    removed: list[Path] = []
    here = host_tag()
    try:
        candidates = list(Path(folder).glob(f".*.{TEMP_TAG}-*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        match = _TEMP_NAME.match(tmp.name)
        if match is None:
            continue
        try:
            if not tmp.is_file() or tmp.is_symlink():
                continue
            if match["host"] == here:
                stale = int(match["pid"]) != os.getpid() and not process_alive(int(match["pid"]))
            else:
                stale = time.time() - tmp.stat().st_mtime > FOREIGN_TEMP_AGE_S
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # another run removed it, or it is not ours to remove
    return removed


def current_umask() -> int:
    """The process umask, read without changing it where /proc tells it (``os.umask`` sets as it reads,
    which another thread could observe); falls back to set-and-restore elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the mode a plain ``open()`` would give (``0o666`` minus the umask), not
    mkstemp's private ``0o600``, so a shared cache or results folder stays readable by the group.
    An existing ``path`` is replaced (README: Outputs); temporaries of dead runs beside it are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
