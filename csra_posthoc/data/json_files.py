"""Reading annotation JSON (COCO, WIDER-Attribute) with errors that name the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CSRAError


def read_json(path: Path, param: str) -> Any:
    """Parse ``path``; a missing or malformed file is one line naming it (and where JSON broke)."""
    if not path.is_file():
        raise CSRAError(f"{param} {path}: no such annotation file; check `data_dir` or pass `{param}`", param=param)
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise CSRAError(
            f"{param} {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", param=param
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CSRAError(f"{param} {path}: cannot be read ({exc})", param=param) from None


def require(obj: Any, key: str, where: str, path: Path, kind: type | tuple[type, ...] | None = None) -> Any:
    """``obj[key]``, or one line naming the file, the place (``images[3]``) and the missing key."""
    if not isinstance(obj, dict) or key not in obj:
        raise CSRAError(f"{path}: {where} has no '{key}' key; is this the right annotation file?")
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise CSRAError(f"{path}: {where}['{key}'] should be a {names}, not {type(value).__name__}")
    return value
