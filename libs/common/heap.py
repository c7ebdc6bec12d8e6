"""The worker processes' heap: fewer malloc arenas, and freed memory handed back to the operating system.

A worker keeps a cache of long-lived objects while it allocates and frees millions of short-lived ones
(events, rows, results) on several threads. glibc gives each thread an arena of its own (up to eight per
core) and keeps freed memory inside them, so a worker's resident memory after a backlog stays far above
what it holds. Both calls are glibc's; on another C library (musl, macOS) they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 (glibc has it; musl does not)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = 2) -> bool:
    """Let at most `arenas` malloc arenas exist (call before starting threads); False where unsupported."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Return the free memory of every arena to the operating system; True when some was returned."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
