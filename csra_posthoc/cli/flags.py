"""Python parameter -> CLI flag: the table the CLI uses to name a flag in a library error.

Derived from the Typer app (:func:`csra_posthoc.cli.app.cli_flags`), not maintained by hand; the
rendering is :func:`csra_posthoc.cli.messages.render`. A test checks that every ``param=`` used
in the package has an entry here.
"""

from __future__ import annotations

from .app import cli_flags
from .messages import render

FLAGS: dict[str, str] = cli_flags()


def cli_message(message: str, param: str | None) -> str:
    """``message`` in CLI terms (:func:`~csra_posthoc.cli.messages.render` with :data:`FLAGS`)."""
    return render(message, param, FLAGS)
