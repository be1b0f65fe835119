"""The report's errors: the CLI prints their message and exits with status 2."""

from __future__ import annotations


class ReportError(Exception):
    """A problem with the runs asked for (nothing found, unreadable file); the CLI prints the
    message and exits with status 2."""


class RunNotFoundError(ReportError, FileNotFoundError):
    """A path given as a run does not exist."""
