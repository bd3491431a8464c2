"""Typed errors: every bad input becomes one of these, and the CLI turns them into one line + exit 2."""

from __future__ import annotations


class PlannerError(Exception):
    """Base class for errors caused by the user's input (exit status 2 in the CLI)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class SpecError(PlannerError, ValueError):
    """A model or cluster description is invalid (names the offending field)."""


class PlanError(PlannerError, ValueError):
    """A parallel plan is illegal for its model and cluster (names the violated rule)."""


class InputFileError(PlannerError, ValueError):
    """A file could not be read or parsed (missing, malformed, too large, wrong shape)."""


class LockedError(PlannerError):
    """A file another process holds an exclusive lock on (planner.io.exclusive_lock)."""


class OutputPathError(PlannerError, ValueError):
    """An output path the planner must not write: empty, a directory, a device / FIFO / socket, an input
    of the same command, or in a directory it cannot write."""
