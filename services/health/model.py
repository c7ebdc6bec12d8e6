"""The history the evaluators read: plain records, times as UTC epoch seconds.

Materialization, Execution and Failure are never changed once made (a change is a new record). They are
not frozen dataclasses only because the health worker makes one or two per event, and a frozen dataclass
costs four times as much to build (0.85 vs 0.19 us).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from libs.common.events import AssetSpecData, HealthStatus

RunStatus = Literal["STARTED", "SUCCESS", "FAILURE", "CANCELED"]
TERMINAL: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "CANCELED"})


@dataclass(slots=True)
class Materialization:
    """One successful materialization of the asset."""

    at: float
    run_id: str
    row_count: int | None = None
    duration_s: float | None = None
    columns: tuple[tuple[str, str], ...] | None = None
    partition: str | None = None
    storage_id: int | None = None


@dataclass(slots=True)
class Execution:
    """One run that planned the asset, as the run events last described it."""

    run_id: str
    status: RunStatus
    started_at: float | None = None
    ended_at: float | None = None
    duration_s: float | None = None
    error: str | None = None
    partition: str | None = None
    # Of a failed run: the assets that failed on their own (`RunData.failed_asset_keys`); an asset of the run
    # not among them and not materialized was blocked by them. None: not said (an older producer).
    failed_assets: tuple[str, ...] | None = None

    @property
    def at(self) -> float:
        """When the run ended (or started, while it runs)."""
        return self.ended_at or self.started_at or 0.0


@dataclass(slots=True)
class Failure:
    """A failed materialization of a planned asset."""

    at: float
    run_id: str
    error: str | None = None
    partition: str | None = None


@dataclass(slots=True)
class AssetHistory:
    """Everything known about one asset, oldest first; the input of every evaluator."""

    key: str
    spec: AssetSpecData | None = None
    spec_version: int = 0
    retired: bool = False
    registered_at: float | None = None
    materializations: list[Materialization] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # Bumped by whoever changes the history, so results that depend only on it can be reused.
    version: int = 0
    # Run ids of `executions` (possibly a few already trimmed away): a cheap test before searching the list.
    run_ids: set[str] = field(default_factory=set)

    @property
    def has_data(self) -> bool:
        """True once a finished run, a materialization or a failure of the asset is on record."""
        return bool(
            self.materializations or self.failures or any(e.status in TERMINAL for e in self.executions)
        )

    @property
    def last_materialization(self) -> Materialization | None:
        return self.materializations[-1] if self.materializations else None


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """What the dependency check needs to know about one upstream asset."""

    key: str
    registered: bool
    retired: bool = False
    status: HealthStatus = HealthStatus.UNKNOWN
    execution_failed: bool = False
    stale: bool = False
    last_materialized_at: float | None = None
    last_run_id: str | None = None
