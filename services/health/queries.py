"""Read functions over health.db for the CLI (`asset-health`, `asset-details`)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, JsonValue

from libs.common.events import CHECK_NAMES, CheckResult, HealthStatus, from_timestamp
from libs.common.store import Store
from services.health import store as db

_SPARKS = "▁▂▃▄▅▆▇█"


class AssetHealth(BaseModel):
    """The latest health of one asset with every check result."""

    asset_key: str
    status: HealthStatus
    reasons: list[str]
    checks: list[CheckResult]
    evaluated_at: datetime
    changed_at: datetime
    transitions: int
    group: str | None = None
    owners: list[str] = []
    code_location: str | None = None  # of the asset's spec copy (from discovery's events)


class AssetStatus(BaseModel):
    """An asset's status and reasons, without its checks (what listings show)."""

    asset_key: str
    status: HealthStatus
    reasons: list[str]
    evaluated_at: datetime


class HistoryPoint(BaseModel):
    """One run or materialization of an asset, newest first in `history`."""

    at: datetime
    kind: str  # materialization | run | failed_materialization
    run_id: str
    status: str
    row_count: int | None = None
    duration_s: float | None = None
    partition: str | None = None
    columns: int | None = None
    error: str | None = None


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


_CHECK_ORDER = {name: i for i, name in enumerate(CHECK_NAMES)}


def latest_health(
    store: Store, key: str | None = None, *, statuses: Collection[HealthStatus] | None = None
) -> list[AssetHealth]:
    """The latest health of every asset (or only `key`, or only those of `statuses`), worst status first,
    then by key."""
    wanted = sorted(statuses) if statuses is not None else None
    with store.read() as conn:
        rows = db.read_health(conn, key, wanted)
        check_rows = db.read_checks(conn, key, wanted) if rows else []
    checks: dict[str, list[CheckResult]] = {}
    for r in check_rows:
        values: dict[str, JsonValue] = json.loads(r["check_values"])
        checks.setdefault(r["asset_key"], []).append(
            CheckResult(check=r["check_name"], outcome=r["outcome"], reason=r["reason"], values=values)
        )
    out = []
    for r in rows:
        spec = json.loads(r["spec"]) if r["spec"] else {}
        out.append(
            AssetHealth(
                asset_key=r["asset_key"],
                status=r["status"],
                reasons=json.loads(r["reasons"]),
                checks=sorted(checks.get(r["asset_key"], []), key=lambda c: _CHECK_ORDER.get(c.check, 99)),
                evaluated_at=_dt(r["evaluated_at"]),
                changed_at=_dt(r["changed_at"]),
                transitions=r["transitions"],
                group=r["group_name"],
                owners=spec.get("owners", []),
                code_location=spec.get("code_location"),
            )
        )
    return sorted(out, key=lambda a: (a.status.rank, a.asset_key))


def statuses(store: Store, key: str | None = None) -> dict[str, AssetStatus]:
    """Every evaluated asset's (or only `key`'s) status and reasons (no check results: cheap for a whole
    inventory)."""
    with store.read() as conn:
        rows = db.read_statuses(conn, key)
    return {
        r["asset_key"]: AssetStatus(
            asset_key=r["asset_key"],
            status=r["status"],
            reasons=json.loads(r["reasons"]),
            evaluated_at=_dt(r["evaluated_at"]),
        )
        for r in rows
    }


def status_by_asset(store: Store) -> dict[str, str]:
    """Every evaluated asset's status, nothing else: a catalog listing of 50,000 assets reads it in tens of
    milliseconds (`statuses` decodes each asset's reasons and builds a model: seconds)."""
    with store.read() as conn:
        return dict(db.read_status_by_asset(conn))


def code_locations(store: Store) -> list[str]:
    """The code locations of the assets health knows, sorted (for "did you mean" hints)."""
    with store.read() as conn:
        specs = db.read_specs(conn)
    return sorted({loc for text in specs if (loc := json.loads(text).get("code_location"))})


def known_assets(store: Store) -> list[str]:
    """Every asset with a health row (for "did you mean" hints)."""
    with store.read() as conn:
        return db.read_health_keys(conn)


def history(store: Store, key: str, limit: int = 50) -> list[HistoryPoint]:
    """The asset's newest `limit` materializations, failed materializations and runs, newest first."""
    with store.read() as conn:
        mats = db.read_materializations(conn, key, limit)
        fails = db.read_failures(conn, key, limit)
        runs = db.read_executions(conn, key, limit)
    points = [
        HistoryPoint(
            at=_dt(r["occurred_at"]),
            kind="materialization",
            run_id=r["run_id"],
            status="SUCCESS",
            row_count=r["row_count"],
            duration_s=r["duration_s"],
            partition=r["partition"],
            columns=len(json.loads(r["column_schema"])) if r["column_schema"] else None,
        )
        for r in mats
    ]
    points += [
        HistoryPoint(
            at=_dt(r["occurred_at"]),
            kind="failed_materialization",
            run_id=r["run_id"],
            status="FAILURE",
            partition=r["partition"],
            error=r["error"],
        )
        for r in fails
    ]
    points += [
        HistoryPoint(
            at=_dt(r["at"]),
            kind="run",
            run_id=r["run_id"],
            status=r["status"],
            duration_s=r["duration_s"],
            partition=r["partition"],
            error=r["error"],
        )
        for r in runs
    ]
    return sorted(points, key=lambda p: p.at, reverse=True)[:limit]


def series(points: Sequence[HistoryPoint]) -> tuple[list[float], list[float]]:
    """Row counts and run durations of `history(...)` points, oldest first (for sparklines)."""
    ordered = sorted(points, key=lambda p: p.at)
    rows = [float(p.row_count) for p in ordered if p.kind == "materialization" and p.row_count is not None]
    durations = [p.duration_s for p in ordered if p.kind == "run" and p.duration_s is not None]
    return rows, durations


def sparkline(values: Sequence[float | None], width: int | None = None) -> str:
    """A one-line chart of `values` (`▁▂▃▅▇`), scaled between their min and max; gaps (None) as spaces.

    With `width`, the newest `width` values are shown. An empty series gives an empty string.
    """
    vals = list(values)[-width:] if width else list(values)
    present = [v for v in vals if v is not None]
    if not present:
        return ""
    lo, hi = min(present), max(present)
    span = hi - lo
    out = []
    for v in vals:
        if v is None:
            out.append(" ")
        elif span == 0:
            out.append(_SPARKS[3])
        else:
            out.append(_SPARKS[min(len(_SPARKS) - 1, int((v - lo) / span * (len(_SPARKS) - 1) + 0.5))])
    return "".join(out)


def last_materializations(store: Store, key: str | None = None) -> dict[str, str]:
    """The time of each asset's latest materialization (ISO 8601, UTC), for listings."""
    with store.read() as conn:
        rows = db.read_last_materializations(conn, key)
    return {k: _dt(at).isoformat(timespec="seconds") for k, at in rows}


class AutomationHealth(BaseModel):
    """The latest health of one automation object (sensor, schedule, daemon, publisher, op job) with its
    checks."""

    key: str
    kind: str
    code_location: str | None = None
    status: HealthStatus
    reasons: list[str]
    checks: list[CheckResult]
    owners: list[str] = []
    last_seen: datetime | None = None  # its newest tick or heartbeat
    evaluated_at: datetime | None = None
    changed_at: datetime | None = None


def automation_health(store: Store) -> list[AutomationHealth]:
    """Every automation object on record, worst first, then by kind and key."""
    items: list[AutomationHealth] = []
    with store.read() as conn:
        rows = db.read_automation(conn)
    for key, kind, location, status, reasons, checks, last_at, evaluated_at, changed_at, state in rows:
        items.append(
            AutomationHealth(
                key=key,
                kind=kind,
                code_location=location,
                status=HealthStatus(status),
                reasons=json.loads(reasons),
                checks=[CheckResult.model_validate(c) for c in json.loads(checks)],
                owners=list(json.loads(state).get("owners") or []),
                last_seen=from_timestamp(last_at) if last_at is not None else None,
                evaluated_at=from_timestamp(evaluated_at) if evaluated_at is not None else None,
                changed_at=from_timestamp(changed_at) if changed_at is not None else None,
            )
        )
    items.sort(key=lambda i: (i.status.rank, i.kind, i.key))
    return items
