"""Deployment tests: make deploytools importable (pytest runs with --import-mode=importlib), and build the
image while the rest of the suite runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

IMAGE_TESTS = "test_image.py"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image tests run last, so the build started at collection overlaps every other test."""
    items.sort(key=lambda item: item.path.name == IMAGE_TESTS)  # stable: the order is kept otherwise


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(item.path.name == IMAGE_TESTS for item in session.items):
        from imagetools import start_build

        start_build()
