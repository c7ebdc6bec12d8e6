"""The heap calls on this machine's C library (glibc on Linux; elsewhere they are no-ops)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest

from libs.common import heap

glibc_only = pytest.mark.skipif(heap._glibc() is None, reason="not glibc: the heap calls do nothing here")


@glibc_only
def test_freed_memory_inside_the_heap_goes_back_to_the_system() -> None:
    """100 MB of 1 KiB blocks freed, all but the last one (it pins the heap's top, as a cache entry loaded
    after a backlog does): glibc keeps the pages until `trim`."""
    script = textwrap.dedent(
        """
        import psutil
        from libs.common import heap
        rss = lambda: psutil.Process().memory_info().rss / 2**20
        blocks = [bytearray(1024) for _ in range(100_000)]
        pinned = blocks[-1]
        del blocks
        before = rss()
        assert heap.trim()
        print(before - rss())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(done.stdout) > 50, done.stdout


@glibc_only
def test_arenas_can_be_limited() -> None:
    assert heap.limit_arenas(2)


def test_collector_pause_nests_and_restores_the_collector_as_it_was() -> None:
    assert gc.isenabled()
    with heap.collector_paused():
        assert not gc.isenabled()
        with heap.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    with pytest.raises(RuntimeError), heap.collector_paused():
        raise RuntimeError("registration failed")
    assert gc.isenabled()
    gc.disable()  # a process that runs without the collector keeps it off
    try:
        with heap.collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
