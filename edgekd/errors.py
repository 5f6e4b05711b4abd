"""Errors a user can act on: each carries a one-line message and a process exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgeKDError(Exception):
    """Base of every error edgekd reports to a user instead of a traceback."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(EdgeKDError):
    """A bad command-line value, recipe key or target name."""

    exit_code = 2


class InputError(EdgeKDError):
    """A missing, unreadable or corrupt file the user pointed us at."""

    exit_code = 3


class ShapeError(EdgeKDError):
    """Data that does not fit the teacher."""

    exit_code = 4


class StageError(EdgeKDError):
    """A stage could not do its work (unsupported op, NaN loss, runtime failure)."""

    exit_code = 5


class BudgetMiss(StageError):
    """The student misses the user's budget (the gate stage; the figures are in its verdict)."""


def suggest(name: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or ''."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
