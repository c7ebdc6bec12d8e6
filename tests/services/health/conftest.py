"""Builders of the events the health service consumes, as a fixture (tests run in importlib mode)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from libs.common.bus import Delivery
from libs.common.events import (
    ASSET_CHANGES,
    ASSETS,
    RUN_STATUS_TYPES,
    RUNS,
    AssetChanged,
    AssetChangeData,
    AssetMaterializationFailed,
    AssetMaterialized,
    AssetSpecData,
    Column,
    Event,
    MaterializationData,
    MaterializationFailedData,
    RunData,
    RunEvent,
    new_event,
)

T0 = 1_780_000_000.0  # a fixed epoch (2026-05-28) so that tests never depend on the wall clock


def dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class Clock:
    """A settable clock for the services' `clock=` (`clock.t = ...`)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Events:
    """Event builders with deterministic, unique identities."""

    T0 = T0

    def __init__(self) -> None:
        self._seq = itertools.count(1)

    @staticmethod
    def deliveries(*events: Event) -> list[Delivery]:
        return _deliveries(*events)

    def spec(
        self, key: str, version: int = 1, *, retired: bool = False, at: float = T0, **fields: Any
    ) -> AssetChanged:
        spec = AssetSpecData(key=key, **fields)
        kind = "asset.retired" if retired else ("asset.registered" if version == 1 else "asset.changed")
        return new_event(
            AssetChanged,
            kind,
            identity=f"{key}:{version}:{kind}",
            data=AssetChangeData(spec=spec, version=version, retired_at=dt(at) if retired else None),
            source="discovery",
            occurred_at=dt(at),
        )

    def mat(
        self,
        key: str,
        at: float,
        *,
        run_id: str | None = None,
        rows: int | None = None,
        duration_s: float | None = None,
        columns: list[tuple[str, str]] | None = None,
    ) -> AssetMaterialized:
        run_id = run_id or f"run-{next(self._seq)}"
        data = MaterializationData(
            asset_key=key,
            run_id=run_id,
            row_count=rows,
            duration_s=duration_s,
            column_schema=[Column(name=n, type=t) for n, t in columns] if columns is not None else None,
            storage_id=next(self._seq),
        )
        return new_event(
            AssetMaterialized,
            "asset.materialized",
            identity=f"{key}:{run_id}:{at}",
            data=data,
            source="orchestrator",
            occurred_at=dt(at),
        )

    def run(
        self,
        run_id: str,
        status: str,
        keys: list[str],
        *,
        start: float,
        end: float | None = None,
        error: str | None = None,
        failed: list[str] | None = None,
    ) -> RunEvent:
        data = RunData(
            run_id=run_id,
            job_name="job",
            status=status,
            asset_keys=keys,  # type: ignore[arg-type]
            started_at=dt(start),
            ended_at=dt(end) if end is not None else None,
            duration_s=(end - start) if end is not None else None,
            error=error,
            failed_asset_keys=failed,
        )
        etype = RUN_STATUS_TYPES[status]
        return new_event(
            RunEvent,
            etype,
            identity=run_id,
            data=data,
            source="orchestrator",
            occurred_at=dt(end if end is not None else start),
        )

    def failed(self, key: str, run_id: str, at: float, error: str = "boom") -> AssetMaterializationFailed:
        data = MaterializationFailedData(asset_key=key, run_id=run_id, error=error)
        return new_event(
            AssetMaterializationFailed,
            "asset.materialization_failed",
            identity=f"{key}:{run_id}",
            data=data,
            source="orchestrator",
            occurred_at=dt(at),
        )


def _deliveries(*events: Event) -> list[Delivery]:
    """Wrap events as a consumer would hand them to the handler."""
    stream_of = {"asset.materialized": ASSETS, "asset.materialization_failed": ASSETS}
    out = []
    for i, e in enumerate(events):
        stream = stream_of.get(e.type, RUNS if e.type.startswith("run.") else ASSET_CHANGES)
        out.append(Delivery(stream, f"{i + 1}-0", e))  # type: ignore[arg-type]
    return out


@pytest.fixture
def ev() -> Events:
    return Events()
