"""A small rich progress bar on stderr that any stage can reuse (stdout stays for results).

    with progress_bar(total=len(dataset), description="eval tiny.en") as bar:
        for utt in dataset:
            ...
            bar.advance(wer="12.3%")   # extra fields are shown after the bar

``enabled=False`` (tests, ``--quiet``) gives a no-op bar with the same interface, so callers need
no branches. When stderr is not a terminal (a pipe, a CI log) a plain line is printed at most
every 30 s instead of a redrawn bar.
"""

from __future__ import annotations

import os
import sys
import time
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


class _PlainBar:
    """For logs (pipes, CI): one plain line at most every ``every_s`` seconds, and at the end."""

    def __init__(self, total: int | None, description: str, every_s: float = 30.0) -> None:
        self.total, self.description, self.every_s = total, description, every_s
        self.done, self.start = 0, time.monotonic()
        self.last = self.start

    def advance(self, n: int = 1, **fields: str) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or (self.total is not None and self.done >= self.total):
            self.last = now
            note = "".join(f"  {k}={v}" for k, v in fields.items())
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.description}: {self.done}{of} ({now - self.start:.0f} s){note}", file=sys.stderr, flush=True)


@contextmanager
def progress_bar(total: int | None, description: str = "", enabled: bool = True) -> Iterator[_Bar | _PlainBar]:
    if not enabled:
        yield _Bar(None, None)
        return
    if not _interactive():
        yield _PlainBar(total, description)
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
