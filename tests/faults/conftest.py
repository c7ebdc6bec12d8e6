"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.alerts.testing import RecordingReceiver


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    """A webhook receiver recording every notice."""
    with RecordingReceiver() as server:
        yield server
