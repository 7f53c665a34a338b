"""Rich progress bars with a throughput column, shared by every long loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def progress_bar(
    console: Console | None, description: str, total: int, unit: str = "img", transient: bool = False
) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; shows done/total, rate in ``unit``/s, elapsed and remaining time
    (``transient``: the bar is cleared when done)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=transient) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[task].speed
            progress.update(task, rate=f"{speed:7.1f} {unit}/s" if speed else "")

        yield advance


Advance = Callable[[int], None]
# ``bar(description, total, unit)``: a context yielding ``advance(n)``; how library code that runs
# long (the sweep, the held-out choice, the bootstrap) shows progress without owning a console
ProgressBar = Callable[[str, int, str], AbstractContextManager[Advance]]


def no_bar(description: str, total: int, unit: str = "img") -> AbstractContextManager[Advance]:
    """A :data:`ProgressBar` that shows nothing."""
    return nullcontext(lambda n: None)


def console_bar(console: Console) -> ProgressBar:
    """:func:`progress_bar` on ``console`` as a :data:`ProgressBar`, cleared when done (the scoring
    stages take seconds; the table that follows is what stays on the screen); nothing where the
    console is not a terminal (a log would keep only blank lines of a cleared bar)."""
    if not console.is_terminal:
        return no_bar
    return lambda description, total, unit: progress_bar(console, description, total, unit, transient=True)
