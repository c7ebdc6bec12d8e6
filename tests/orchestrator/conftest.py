"""Fixtures for the orchestrator tests: a real persistent Dagster instance in the test's DAGSTER_HOME."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, instance_for_test

from orchestrator.settings import OrchestratorSettings, get_settings


@pytest.fixture
def dagster_instance(settings: OrchestratorSettings) -> Iterator[DagsterInstance]:
    """A persistent instance with Dagster's default SQLite storage (run-sharded event log) in DAGSTER_HOME.

    The assets read the process settings (get_settings, cached): the cache is cleared so that they see
    this test's DAGSTER_HOME (demo source, warehouse) rather than an earlier test's.
    """
    get_settings.cache_clear()
    with instance_for_test(temp_dir=str(settings.dagster_home)) as instance:
        yield instance
    get_settings.cache_clear()
