"""Helpers for tests and benchmarks of every part: deadline-bounded waiting (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout_s: float = 30.0, what: str = "condition", diagnose: Callable[[], str] = lambda: ""
) -> T:
    """Poll `condition` until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s\n{diagnose()}".rstrip())
        time.sleep(0.1)
