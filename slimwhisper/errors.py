"""The one base type of every error a user can cause, and the problem-list convention.

Standard library only: ``slimwhisper.runtime`` (which ships to devices without torch) derives its
errors from ``UserError`` too, so the CLI's single handler (``slimwhisper.cli.main``) can tell bad
input (one ``error:`` line, exit 2) from a bug (a traceback) with one ``isinstance`` check.

Configs collect every problem before raising, so a user fixes them all in one go:

    problems = []
    if self.steps < 1:
        problems.append("--steps must be >= 1")
    raise_problems(TrainError, "invalid training config", problems)   # no-op when empty
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """Bad input, a missing or damaged file, or a request that cannot be met; the message says what to do.

    ``headline`` is one line; ``problems`` (optional) are the individual faults, shown as an
    indented list under it. ``str(err)`` is both, so library users see the same text as the CLI.
    """

    def __init__(self, headline: str, problems: Iterable[str] = ()) -> None:
        self.headline = str(headline).strip()
        self.problems = tuple(str(p) for p in problems)
        super().__init__(self.headline)

    def __str__(self) -> str:
        if not self.problems:
            return self.headline
        if len(self.problems) == 1:  # one problem reads best on one line
            return f"{self.headline.rstrip(':')}: {self.problems[0]}"
        return self.headline.rstrip(":") + ":\n" + "\n".join(f"  - {p}" for p in self.problems)


def raise_problems(error: type[UserError], headline: str, problems: Iterable[str]) -> None:
    """Raise ``error(headline, problems)`` when there is at least one problem; otherwise return."""
    problems = list(problems)
    if problems:
        raise error(headline, problems)


def check_positive_int(problems: list[str], option: str, value: object, *, allow_none: bool = False) -> None:
    """Append a problem when ``value`` is not an int >= 1 (bools are refused: True is not a thread count)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{option} must be a positive integer, got {value!r}")
