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
    """An exception's first message line (its type name when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
