"""One progress-bar factory for every long job (rich, on stderr so stdout stays machine-readable)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress | None]:
    """A rich ``Progress`` on stderr, or ``None`` when disabled (tests, ``--quiet``)."""
    if not enabled:
        yield None
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
    with bar:
        yield bar


@contextlib.contextmanager
def count_progress(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A callback ``done(n)`` that moves a bar to ``n`` of ``total``; ``None`` when disabled.

    For library functions that report progress as a count of finished items (``progress=``).
    """
    with progress_bar(enabled) as bar:
        if bar is None:
            yield None
            return
        task = bar.add_task(description, total=total)
        yield lambda n: bar.update(task, completed=n)
