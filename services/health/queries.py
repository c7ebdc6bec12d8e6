"""Read functions over health.db for the CLI (`asset-health`, `asset-details`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, JsonValue

from libs.common.events import CHECK_NAMES, CheckResult, HealthStatus
from libs.common.store import Store

HEALTH_STATUSES: tuple[HealthStatus, ...] = ("FAILED", "DEGRADED", "WARNING", "HEALTHY", "UNKNOWN")
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


def latest_health(store: Store, key: str | None = None) -> list[AssetHealth]:
    """The latest health of every asset (or only `key`), worst status first, then by key."""
    with store.read() as conn:
        where, args = ("WHERE h.asset_key = ?", (key,)) if key is not None else ("", ())
        rows = conn.execute(
            "SELECT h.asset_key, h.status, h.reasons, h.evaluated_at, h.changed_at, h.transitions, s.spec "
            f"FROM asset_health h LEFT JOIN asset_specs s ON s.asset_key = h.asset_key {where}",
            args,
        ).fetchall()
        checks: dict[str, list[CheckResult]] = {}
        check_rows = conn.execute(
            f"SELECT asset_key, check_name, outcome, reason, check_values FROM check_results "
            f"{'WHERE asset_key = ?' if key is not None else ''}",
            args,
        ).fetchall()
    order = {name: i for i, name in enumerate(CHECK_NAMES)}
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
                checks=sorted(checks.get(r["asset_key"], []), key=lambda c: order.get(c.check, 99)),
                evaluated_at=_dt(r["evaluated_at"]),
                changed_at=_dt(r["changed_at"]),
                transitions=r["transitions"],
                group=spec.get("group"),
                owners=spec.get("owners", []),
            )
        )
    rank = {s: i for i, s in enumerate(HEALTH_STATUSES)}
    return sorted(out, key=lambda a: (rank.get(a.status, 9), a.asset_key))


def history(store: Store, key: str, limit: int = 50) -> list[HistoryPoint]:
    """The asset's newest `limit` materializations, failed materializations and runs, newest first."""
    with store.read() as conn:
        points = [
            HistoryPoint(
                at=_dt(r["occurred_at"]), kind="materialization", run_id=r["run_id"], status="SUCCESS",
                row_count=r["row_count"], duration_s=r["duration_s"], partition=r["partition"],
                columns=len(json.loads(r["column_schema"])) if r["column_schema"] else None,
            )
            for r in conn.execute(
                "SELECT * FROM materializations WHERE asset_key = ? ORDER BY occurred_at DESC LIMIT ?", (key, limit)
            )
        ]
        points += [
            HistoryPoint(at=_dt(r["occurred_at"]), kind="failed_materialization", run_id=r["run_id"], status="FAILURE",
                         partition=r["partition"], error=r["error"])
            for r in conn.execute(
                "SELECT * FROM materialization_failures WHERE asset_key = ? ORDER BY occurred_at DESC LIMIT ?", (key, limit)
            )
        ]
        points += [
            HistoryPoint(at=_dt(r["at"]), kind="run", run_id=r["run_id"], status=r["status"], duration_s=r["duration_s"],
                         partition=r["partition"], error=r["error"])
            for r in conn.execute(
                "SELECT *, COALESCE(ended_at, started_at, updated_at) AS at FROM executions WHERE asset_key = ? "
                "ORDER BY at DESC LIMIT ?",
                (key, limit),
            )
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
        if key is None:
            rows = conn.execute("SELECT asset_key, MAX(occurred_at) FROM materializations GROUP BY asset_key").fetchall()
        else:
            rows = conn.execute("SELECT asset_key, MAX(occurred_at) FROM materializations WHERE asset_key = ?", (key,)).fetchall()
    return {str(r[0]): _dt(r[1]).isoformat(timespec="seconds") for r in rows if r[1] is not None}
