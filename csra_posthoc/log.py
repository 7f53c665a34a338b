"""Library output: every progress line goes to the ``csra_posthoc`` logger and, unless silenced, to a rich console.

Library users get the lines through :mod:`logging` (``logging.getLogger("csra_posthoc")``; the
package adds only a ``NullHandler``); the CLI shows them on its console. ``quiet=True``
(``--quiet``) gives the library a silent console: no progress bars, no lines, results unchanged.
"""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.text import Text

LOGGER = logging.getLogger("csra_posthoc")
LOGGER.addHandler(logging.NullHandler())


def output_console(console: Console | None, quiet: bool = False) -> Console:
    """The console extraction prints to: a silent one when ``quiet``, else ``console`` or stderr."""
    if quiet:
        return Console(quiet=True)
    return console or Console(stderr=True)


def say(console: Console | None, markup: str, level: int = logging.INFO) -> None:
    """Log ``markup``'s plain text, and print it on ``console`` (rich markup) when there is one."""
    LOGGER.log(level, Text.from_markup(markup).plain)
    if console is not None:
        if (
            console.quiet and level >= logging.WARNING and _main_rank()
        ):  # quiet drops chatter, never a warning (the cache is off, ...)
            console = Console(stderr=True)
        console.print(markup, soft_wrap=True)


def _main_rank() -> bool:
    """Not a torchrun rank other than 0 (those print nothing but their own errors; read without torch)."""
    return os.environ.get("RANK", "0") == "0"
