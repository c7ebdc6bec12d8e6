"""Fixtures for orchestrator/shared: settings on a temporary DAGSTER_HOME, the demo source, real databases."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pyodbc
import pytest

from libs.common.settings import load_settings
from orchestrator.settings import OrchestratorSettings, SqlConnection
from orchestrator.shared.demo_source import create_demo_source

# Fixed "now" for the demo source, so windows and counts are reproducible.
DEMO_NOW = dt.datetime(2026, 3, 15, 12, 0, tzinfo=dt.UTC)


def require_driver(name: str) -> None:
    """Skip (a failure in CI) when an ODBC driver `make test` installs is missing."""
    if name not in pyodbc.drivers():
        pytest.skip(f"ODBC driver {name!r} not registered; run scripts/install-test-tools.sh as root")


@pytest.fixture
def demo_now() -> dt.datetime:
    """The `now` the demo source was created at."""
    return DEMO_NOW


@pytest.fixture
def sqlite_odbc() -> None:
    """Requires the SQLite3 ODBC driver (Debian libsqliteodbc)."""
    require_driver("SQLite3")


@pytest.fixture
def need_driver() -> Callable[[str], None]:
    return require_driver


@pytest.fixture
def shared_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OrchestratorSettings:
    """Settings with DAGSTER_HOME in tmp_path and fast retries; no Redis needed."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("AMS_") and name not in ("AMS_FAIL_ON_SKIP", "AMS_CONFIG_DIR"):
            monkeypatch.delenv(name)
    return load_settings(
        OrchestratorSettings,
        dagster_home=str(home),
        logging={"file": None, "format": "console"},
        connections={
            "demo_source": {"driver": "SQLite3", "database": "demo_source.db"},
            "warehouse": {"driver": "SQLite3", "database": "warehouse.db"},
        },
        load_window={"lookback": "1d", "align": "day", "timezone": "UTC"},
    )


@pytest.fixture
def demo_db(shared_settings: OrchestratorSettings) -> Path:
    return create_demo_source(shared_settings.dagster_home / "demo_source.db", rows=300, seed=7, now=DEMO_NOW)


@pytest.fixture
def pg(postgres_url: str) -> Iterator[SqlConnection]:
    """A SqlConnection to a fresh PostgreSQL database through the `PostgreSQL Unicode` ODBC driver."""
    require_driver("PostgreSQL Unicode")
    url = urlparse(postgres_url)
    yield SqlConnection(
        driver="PostgreSQL Unicode",
        server=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        database=url.path.lstrip("/"),
        username=url.username or "postgres",
        retries=0,
    )
