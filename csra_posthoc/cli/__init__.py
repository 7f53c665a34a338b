"""The command line: a thin Typer layer (:mod:`.app`) and the parameter -> flag table (:mod:`.flags`)."""

from __future__ import annotations


def main() -> None:
    """The ``csra-posthoc`` console script; the app is imported here, so importing :mod:`.flags` stays light."""
    from .app import main as run_app

    run_app()
