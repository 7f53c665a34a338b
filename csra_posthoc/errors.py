"""User-facing errors.

Every problem caused by the user's input (a path, a flag, a file's contents) is raised as
:class:`CSRAError` with one line that names the culprit and the fix. The CLI prints that
line and exits non-zero; library users can catch it. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # CSI sequences (colours, bold): torch colours its hints


class CSRAError(Exception):
    """A problem with the user's input, explained in one line.

    Library messages speak in library terms: they name the Python parameter (``img_size``), never
    a CLI flag. ``param`` says which parameter is at fault so that the CLI can name its flag
    (``--img-size``) instead; None when the culprit is not a parameter (a file's contents, say).
    """

    exit_code: int = 2

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (an embedded message must not colour ours)."""
    return _ANSI.sub("", text)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first message line (its type name when the message is empty), for one-line errors.

    Longer than ``limit`` characters, it ends at the last full sentence that fits, else at the
    last word boundary followed by "…": a quoted message is never cut mid-sentence unannounced.
    """
    text = strip_ansi(str(exc)).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0].strip()
    if len(line) <= limit:
        return line
    cut = line[:limit]
    sentence = cut.rfind(". ")
    if sentence > limit // 2:
        return cut[: sentence + 1]
    space = cut.rfind(" ")
    if space > limit // 2:  # a very long word (a path, a hash) is cut inside rather than dropped
        cut = cut[:space]
    return cut.rstrip(" ,;:([") + "…"
