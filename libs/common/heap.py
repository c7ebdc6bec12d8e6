"""The processes' heap: fewer malloc arenas, freed memory handed back to the operating system, and the
cyclic garbage collector paused while many objects that die together are alive.

A worker keeps a cache of long-lived objects while it allocates and frees millions of short-lived ones
(events, rows, results) on several threads. glibc gives each thread an arena of its own (up to eight per
core) and keeps freed memory inside them, so a worker's resident memory after a backlog stays far above
what it holds. Both calls are glibc's; on another C library (musl, macOS) they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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


_PAUSE_LOCK = threading.Lock()
_pauses = 0
_resume = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block: while thousands of objects made together stay
    alive until they die together (a consumer's batch, a GraphQL poll of 10,000 assets), each collection
    would scan them all again and find nothing to free. Nested and concurrent pauses (threads) share one:
    the collector resumes when the last one ends, and only if it was running before the first.
    """
    global _pauses, _resume
    with _PAUSE_LOCK:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _PAUSE_LOCK:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()
