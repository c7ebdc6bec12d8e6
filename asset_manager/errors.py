"""The CLI's error type: a one-line message and an exit code (2 for bad input, 1 for a failed check)."""

from __future__ import annotations


class CliError(Exception):
    """Raised by commands; `main` prints `error: <message>` on one line and exits with `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
