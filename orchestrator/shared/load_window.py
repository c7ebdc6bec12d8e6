"""The [start, end) load window of an ingestion asset.

From a time-partitioned asset's partition when there is one, else from `load_window:` in app_config.yaml:
the window ends at `now - end_offset` floored to the start of the day (or hour) in the configured IANA time
zone, and starts `lookback` earlier (calendar days for day alignment, so a DST day is 23 or 25 hours long).
Both ends are aware datetimes in that zone. `compute_load_window` is the pure core.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal
from zoneinfo import ZoneInfo

from orchestrator.settings import OrchestratorSettings, get_settings

Align = Literal["day", "hour", "none"]
UTC = dt.UTC


def _normalise(value: dt.datetime) -> dt.datetime:
    """A real instant: a wall time in a DST gap moves forward past the gap (as the clocks did)."""
    zone = value.tzinfo
    return value.astimezone(UTC).astimezone(zone)


def floor_to(value: dt.datetime, align: Align) -> dt.datetime:
    """The start of the day or hour containing `value` (aware), in `value`'s zone."""
    if value.tzinfo is None:
        raise ValueError("floor_to needs an aware datetime")
    if align == "none":
        return value
    if align == "day":
        midnight = value.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
        # Where midnight itself does not exist (DST at 00:00) the day starts at the end of the gap.
        return _normalise(midnight)
    top = value.replace(minute=0, second=0, microsecond=0)
    floored = _normalise(top)
    # The top of the hour fell in a gap (e.g. 30-minute DST shifts): take the earlier fold.
    if floored.astimezone(UTC) > value.astimezone(UTC):
        floored = _normalise(top.replace(fold=0) - dt.timedelta(hours=1))
    return floored


def compute_load_window(
    now: dt.datetime,
    *,
    lookback: dt.timedelta,
    align: Align = "day",
    timezone: str = "UTC",
    end_offset: dt.timedelta = dt.timedelta(0),
) -> tuple[dt.datetime, dt.datetime]:
    """The window ending at `now - end_offset` floored to `align` in `timezone`; pure.

    Guarantees start < end <= now (as instants), both aligned, both in `timezone`. Note that Python
    compares and subtracts datetimes of one zone by wall clock; use `.astimezone(UTC)` for durations.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if lookback <= dt.timedelta(0):
        raise ValueError("lookback must be positive")
    if end_offset < dt.timedelta(0):
        raise ValueError("end_offset must not be negative")
    zone = ZoneInfo(timezone)
    local_now = now.astimezone(zone)
    end = floor_to((local_now.astimezone(UTC) - end_offset).astimezone(zone), align)
    if align == "day" and lookback % dt.timedelta(days=1) == dt.timedelta(0):
        # Calendar arithmetic on the wall date: "the last N days" in the zone, whatever DST does.
        start_date = end.date() - lookback
        start = floor_to(dt.datetime.combine(start_date, dt.time(12), tzinfo=zone), "day")
    else:
        start = floor_to((end.astimezone(UTC) - lookback).astimezone(zone), align)
    # Compare instants: same-zone datetimes compare by wall clock, which ignores DST folds.
    # Only reachable with a lookback below the alignment unit.
    if start.astimezone(UTC) >= end.astimezone(UTC):
        unit = dt.timedelta(days=1) if align == "day" else dt.timedelta(hours=1)
        start = floor_to((end.astimezone(UTC) - unit).astimezone(zone), align)
    return start, end


def _partition_window(context: Any) -> tuple[dt.datetime, dt.datetime] | None:
    """The time window of the context's partition (or partition range), if it is time-partitioned."""
    if context is None:
        return None
    try:
        if not getattr(context, "has_partition_key", False) and not getattr(
            context, "has_partition_key_range", False
        ):
            return None
        window = context.partition_time_window
    except Exception:  # not time-partitioned (static, dynamic...): Dagster raises a check error
        return None
    return window.start, window.end


def get_load_window(
    context: Any = None,
    *,
    now: dt.datetime | None = None,
    settings: OrchestratorSettings | None = None,
    lookback: dt.timedelta | None = None,
    align: Align | None = None,
    timezone: str | None = None,
) -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) window to load: the partition's time window, else the configured rolling window.

    `context` is the asset's execution context (optional); `now` defaults to the current time; `lookback`,
    `align` and `timezone` override `load_window:` of app_config.yaml for one asset.
    """
    partition = _partition_window(context)
    if partition is not None:
        return partition
    cfg = (settings or get_settings()).load_window
    return compute_load_window(
        now or dt.datetime.now(UTC),
        lookback=lookback if lookback is not None else dt.timedelta(seconds=cfg.lookback),
        align=align or cfg.align,
        timezone=timezone or cfg.timezone,
        end_offset=dt.timedelta(seconds=cfg.end_offset),
    )
