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
