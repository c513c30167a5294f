"""The bench's user error, in a module of its own so that config, targets and backends can all
raise it without importing each other (config validates backend names through the registry)."""

from __future__ import annotations

from slimwhisper.errors import UserError


class BenchError(UserError, ValueError):
    """Bad benchmark input; the message says what to do (the CLI exits 2 with it)."""
