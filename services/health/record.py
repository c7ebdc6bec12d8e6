"""The record step: a batch of events → the facts health.db keeps (`Facts`), and those facts applied to the
in-memory histories. Pure: the store writes the same facts with its own statements (`store.write_facts`).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from libs.common.events import (
    AssetChanged,
    AssetMaterializationFailed,
    AssetMaterialized,
    AssetSpecData,
    Event,
    RunEvent,
)
from services.health.model import TERMINAL, AssetHistory, Execution, Failure, Materialization


@dataclass(slots=True)
class SpecFact:
    key: str
    version: int
    spec: AssetSpecData
    retired_at: float | None
    at: float  # when the change happened (the first one is the asset's registration time)


@dataclass(slots=True)
class RunFact:
    key: str
    job_name: str | None
    execution: Execution


@dataclass(slots=True)
class MaterializationFact:
    event_id: str
    key: str
    materialization: Materialization


@dataclass(slots=True)
class FailureFact:
    event_id: str
    key: str
    storage_id: int | None
    failure: Failure


@dataclass(slots=True)
class Facts:
    """What one batch adds to health.db, and the assets it touches directly."""

    specs: list[SpecFact] = field(default_factory=list)
    runs: list[RunFact] = field(default_factory=list)
    materializations: list[MaterializationFact] = field(default_factory=list)
    failures: list[FailureFact] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)

    def only(self, keys: Collection[str]) -> Facts:
        """The facts about `keys` alone."""
        return Facts(
            specs=[s for s in self.specs if s.key in keys],
            runs=[r for r in self.runs if r.key in keys],
            materializations=[m for m in self.materializations if m.key in keys],
            failures=[f for f in self.failures if f.key in keys],
            touched=[k for k in self.touched if k in keys],
        )


def _ts(event: Event) -> float:
    return event.occurred_at.timestamp()


def facts_of(events: Iterable[Event]) -> Facts:
    """The facts in `events` (other event types are ignored). A run's start and end in one batch (a
    backlog) are merged into one execution per asset and run; merging is associative, so the result is
    the same as one event after the other."""
    out = Facts()
    touched: dict[str, None] = {}
    merged: dict[tuple[str, str], RunFact] = {}
    for event in events:
        if isinstance(event, AssetMaterialized):
            d = event.data
            columns = (
                tuple([(c.name, c.type) for c in d.column_schema]) if d.column_schema is not None else None
            )
            record = Materialization(
                _ts(event), d.run_id, d.row_count, d.duration_s, columns, d.partition, d.storage_id
            )
            out.materializations.append(MaterializationFact(event.id, d.asset_key, record))
            touched[d.asset_key] = None
        elif isinstance(event, RunEvent):
            r = event.data
            started = (
                r.started_at.timestamp() if r.started_at else (_ts(event) if r.status == "STARTED" else None)
            )
            ended = r.ended_at.timestamp() if r.ended_at else (_ts(event) if r.status in TERMINAL else None)
            duration = r.duration_s
            if duration is None and started is not None and ended is not None:
                duration = max(0.0, ended - started)
            failed = tuple(r.failed_asset_keys) if r.failed_asset_keys is not None else None
            incoming = Execution(r.run_id, r.status, started, ended, duration, r.error, r.partition, failed)
            for key in r.asset_keys:
                earlier = merged.get((key, r.run_id))
                merged[(key, r.run_id)] = (
                    RunFact(key, earlier.job_name, merge(earlier.execution, incoming))
                    if earlier
                    else RunFact(key, r.job_name, incoming)
                )
                touched[key] = None
        elif isinstance(event, AssetMaterializationFailed):
            f = event.data
            out.failures.append(
                FailureFact(
                    event.id, f.asset_key, f.storage_id, Failure(_ts(event), f.run_id, f.error, f.partition)
                )
            )
            touched[f.asset_key] = None
        elif isinstance(event, AssetChanged):
            c = event.data
            retired_at = (
                c.retired_at.timestamp()
                if c.retired_at
                else (_ts(event) if event.type == "asset.retired" else None)
            )
            out.specs.append(SpecFact(c.spec.key, c.version, c.spec, retired_at, _ts(event)))
            touched[c.spec.key] = None
    out.specs.sort(key=lambda s: s.version)
    out.runs = list(merged.values())
    out.touched = list(touched)
    return out


def apply(facts: Facts, histories: Mapping[str, AssetHistory], limit: int) -> None:
    """Add `facts` to the histories of the assets they touch (each in `histories`), newest `limit` kept."""
    for s in facts.specs:
        history = histories[s.key]
        # An older version arriving late never replaces a newer one.
        if history.spec is None or s.version >= history.spec_version:
            history.spec = s.spec
            history.spec_version = s.version
            history.retired = s.retired_at is not None
            if history.registered_at is None:
                history.registered_at = s.at
    for r in facts.runs:
        _add_execution(histories[r.key], r.execution)
    for m in facts.materializations:
        items = histories[m.key].materializations
        if items and items[-1].at > m.materialization.at:
            bisect.insort(items, m.materialization, key=_at)
        else:
            items.append(m.materialization)
    for f in facts.failures:
        bisect.insort(histories[f.key].failures, f.failure, key=_at)
    for key in facts.touched:
        history = histories[key]
        history.version += 1
        for items in _lists(history):
            if len(items) > limit:
                del items[: len(items) - limit]
        if len(history.run_ids) > 2 * limit:
            history.run_ids = {e.run_id for e in history.executions}


def _lists(history: AssetHistory) -> tuple[list[Any], ...]:
    return history.materializations, history.executions, history.failures


def _add_execution(history: AssetHistory, incoming: Execution) -> None:
    executions = history.executions
    if incoming.run_id in history.run_ids:
        # Newest first: the run being finished is almost always among the last few executions.
        for i in range(len(executions) - 1, -1, -1):
            if executions[i].run_id == incoming.run_id:
                incoming = merge(executions.pop(i), incoming)
                break
    history.run_ids.add(incoming.run_id)
    if not executions or executions[-1].at <= incoming.at:
        executions.append(incoming)
    else:
        bisect.insort(executions, incoming, key=_execution_at)


def merge(old: Execution, new: Execution) -> Execution:
    """Combine two descriptions of one run: a late STARTED never undoes a finish; known timings stay."""
    status = old.status if new.status == "STARTED" else new.status
    return Execution(
        run_id=old.run_id,
        status=status,
        started_at=old.started_at if old.started_at is not None else new.started_at,
        ended_at=new.ended_at if new.ended_at is not None else old.ended_at,
        duration_s=new.duration_s if new.duration_s is not None else old.duration_s,
        error=new.error or old.error,
        partition=new.partition or old.partition,
        failed_assets=new.failed_assets if new.failed_assets is not None else old.failed_assets,
    )


def _at(item: Materialization | Failure) -> float:
    return item.at


def _execution_at(execution: Execution) -> float:
    return execution.at
