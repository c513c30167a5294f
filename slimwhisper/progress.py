"""A small rich progress bar on stderr that any stage can reuse (stdout stays for results).

    with progress_bar(total=len(dataset), description="eval tiny.en") as bar:
        for utt in dataset:
            ...
            bar.advance(wer="12.3%")   # extra fields are shown after the bar

``enabled=False`` (tests, ``--quiet``, or a non-interactive stderr when CI is set) gives a no-op
bar with the same interface, so callers need no branches.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1, **fields: str) -> None:
        if self._progress is not None:
            note = "  ".join(f"{k}={v}" for k, v in fields.items())
            self._progress.update(self._task, advance=n, note=note)


def _interactive() -> bool:
    # In CI logs a redrawn bar is noise; in a terminal it is the point.
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def progress_bar(total: int | None, description: str = "", enabled: bool = True) -> Iterator[_Bar]:
    if not (enabled and _interactive()):
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, note="")
        yield _Bar(progress, task)


def track(items: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a bar (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, description, enabled) as bar:
        for item in items:
            yield item
            bar.advance()
