"""The Dagster code location: assets (orchestrator/assets), shared helpers, sensors that publish events.

Import `orchestrator.definitions` for the Definitions; this package itself imports nothing heavy.
"""

from typing import Any

__all__ = ["with_health_checks"]


def __getattr__(name: str) -> Any:
    # `from orchestrator import with_health_checks` for a team's Definitions, without importing Dagster when
    # only a submodule is wanted.
    if name == "with_health_checks":
        from orchestrator.checks import with_health_checks

        return with_health_checks
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
