"""The CLI's error type: a one-line message and an exit code (2 for bad input, 1 for a failed check)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class CliError(Exception):
    """Raised by commands; `main` prints `error: <message>` on one line and exits with `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# A path that no file system call can take is bad input (exit 2), not a state of the machine.
_BAD_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EINVAL}


def check_path(path: Path | None) -> Path | None:
    """A typer callback for every path option: refuse, while the arguments are parsed, a path that is empty,
    holds a NUL byte, or that the file system rejects as a name (too long, a loop of links, a file used as
    a directory)."""
    if path is None:
        return None
    text = str(path)
    if not text.strip() or text != str(path).strip():
        raise CliError(f"invalid path {text!r}: empty or surrounded by spaces")
    if "\x00" in text:
        raise CliError("invalid path: it holds a NUL byte")
    for candidate in (path, path.parent):
        try:
            os.stat(candidate)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in _BAD_PATH_ERRNOS:
                shown = text[:80] + ("..." if len(text) > 80 else "")
                raise CliError(f"invalid path {shown!r}: {exc.strerror}") from None
    return path
