from __future__ import annotations

"""Exceptions, under osprofiler's names."""


class CommandError(Exception):
    """Invalid usage of a CLI command."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message or self.__class__.__doc__ or ""


class LogInsightAPIError(Exception):
    """Kept for import compatibility with osprofiler (the Log Insight driver is not provided)."""


class LogInsightLoginTimeout(Exception):
    """Kept for import compatibility with osprofiler (the Log Insight driver is not provided)."""
