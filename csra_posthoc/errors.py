"""User-facing errors.

Every problem caused by the user's input (a path, a flag, a file's contents) is raised as
:class:`CSRAError` with one line that names the culprit and the fix. The CLI prints that
line and exits non-zero; library users can catch it. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class CSRAError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code: int = 2


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first message line (its type name when the message is empty), for one-line errors;
    a line over ``limit`` characters is cut at a word boundary and ends with an ellipsis."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    head = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return head.rstrip(" ,;:") + "…"
