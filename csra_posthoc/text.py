"""User text (class names, file names, config fields) made safe to show in a terminal.

Class names come from CSV headers, COCO / WIDER files and patched configs; file names from the
user's folders. Printed through rich, ``[link=...]`` would become a hyperlink and ``[bold]`` a
style, and raw ESC / OSC bytes would reach the terminal (retitle it, hide text). Everything that
shows user data goes through :func:`safe` (for rich markup strings) or :func:`plain` (for
``rich.text.Text`` / table cells built without markup).
"""

from __future__ import annotations

import re

from rich.markup import escape

# C0 controls except tab / newline, DEL, and C1 controls (CSI, OSC ... as single bytes)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(value: object) -> str:
    """``str(value)`` with control characters shown as ``\\xNN`` escapes: no byte reaches the terminal raw."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def safe(value: object) -> str:
    """:func:`plain`, then rich markup escaped: ``[bold]x`` prints as written, inside an f-string of markup."""
    return escape(plain(value))
