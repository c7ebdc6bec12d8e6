"""get_load_window: properties of the pure window, the config defaults, and partitions on a real Dagster
run."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from dagster import (
    DagsterInstance,
    DailyPartitionsDefinition,
    StaticPartitionsDefinition,
    asset,
    materialize,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.settings import OrchestratorSettings
from orchestrator.shared.load_window import compute_load_window, floor_to, get_load_window

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",  # DST change at midnight: some days start at 01:00
    "America/Havana",  # midnight repeated in autumn
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Asia/Kolkata",  # +05:30
    "Pacific/Chatham",  # +12:45/+13:45
    "Asia/Kathmandu",  # +05:45
]
UNIT = {"day": dt.timedelta(days=1), "hour": dt.timedelta(hours=1)}


def u(value: dt.datetime) -> dt.datetime:
    """The instant in UTC: same-zone datetimes compare and subtract by wall clock, ignoring DST folds."""
    return value.astimezone(dt.UTC)


nows = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2040, 1, 1), timezones=st.just(dt.UTC)
)


@settings(max_examples=400, deadline=None)
@given(
    now=nows,
    zone=st.sampled_from(ZONES),
    align=st.sampled_from(["day", "hour", "none"]),
    lookback_min=st.integers(min_value=1, max_value=60 * 24 * 40),
    offset_min=st.integers(min_value=0, max_value=60 * 48),
)
def test_window_properties(
    now: dt.datetime, zone: str, align: str, lookback_min: int, offset_min: int
) -> None:
    lookback, offset = dt.timedelta(minutes=lookback_min), dt.timedelta(minutes=offset_min)
    start, end = compute_load_window(now, lookback=lookback, align=align, timezone=zone, end_offset=offset)  # type: ignore[arg-type]
    assert u(start) < u(end) <= now
    assert start.tzinfo is not None and str(end.tzinfo) == zone
    assert floor_to(end, align) == end and floor_to(start, align) == start  # type: ignore[arg-type]
    assert end == floor_to((now - offset).astimezone(ZoneInfo(zone)), align)  # type: ignore[arg-type]
    if align == "none":
        assert u(end) == now - offset and u(end) - u(start) == lookback
    else:
        # The end is the start of the day/hour holding now - offset: less than one unit before it
        # (plus the DST shift on a day with a transition).
        assert (now - offset) - u(end) < UNIT[align] + dt.timedelta(hours=1)
        # The window covers at least the lookback (less a DST hour), and at most one unit more.
        assert u(end) - u(start) >= lookback - dt.timedelta(hours=1)
        assert u(end) - u(start) < lookback + UNIT[align] + dt.timedelta(hours=1)


@settings(max_examples=300, deadline=None)
@given(now=nows, zone=st.sampled_from(ZONES), days=st.integers(min_value=1, max_value=60))
def test_whole_days_are_calendar_days(now: dt.datetime, zone: str, days: int) -> None:
    start, end = compute_load_window(now, lookback=dt.timedelta(days=days), align="day", timezone=zone)
    assert (end.date() - start.date()).days == days
    assert end.date() == now.astimezone(ZoneInfo(zone)).date()


@settings(max_examples=300, deadline=None)
@given(value=nows, zone=st.sampled_from(ZONES), align=st.sampled_from(["day", "hour", "none"]))
def test_floor_is_idempotent_and_not_later(value: dt.datetime, zone: str, align: str) -> None:
    local = value.astimezone(ZoneInfo(zone))
    floored = floor_to(local, align)  # type: ignore[arg-type]
    assert u(floored) <= u(local)
    assert floor_to(floored, align) == floored  # type: ignore[arg-type]


def test_examples() -> None:
    now = dt.datetime(2026, 3, 15, 10, 30, tzinfo=dt.UTC)
    assert compute_load_window(now, lookback=dt.timedelta(days=1)) == (
        dt.datetime(2026, 3, 14, tzinfo=ZoneInfo("UTC")),
        dt.datetime(2026, 3, 15, tzinfo=ZoneInfo("UTC")),
    )
    start, end = compute_load_window(
        now, lookback=dt.timedelta(hours=6), align="hour", timezone="Europe/Berlin"
    )
    assert (start.isoformat(), end.isoformat()) == ("2026-03-15T05:00:00+01:00", "2026-03-15T11:00:00+01:00")
    # Berlin springs forward on 2026-03-29: that calendar day is 23 hours long.
    start, end = compute_load_window(
        dt.datetime(2026, 3, 30, 8, tzinfo=dt.UTC), lookback=dt.timedelta(days=1), timezone="Europe/Berlin"
    )
    assert (start.isoformat(), end.isoformat()) == ("2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
    assert u(end) - u(start) == dt.timedelta(hours=23)
    # A late-data offset moves the end back before alignment.
    _, end = compute_load_window(now, lookback=dt.timedelta(days=1), end_offset=dt.timedelta(hours=11))
    assert end == dt.datetime(2026, 3, 14, tzinfo=ZoneInfo("UTC"))


def test_bad_arguments() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="aware"):
        compute_load_window(dt.datetime(2026, 1, 1), lookback=dt.timedelta(days=1))
    with pytest.raises(ValueError, match="positive"):
        compute_load_window(now, lookback=dt.timedelta(0))
    with pytest.raises(ValueError, match="negative"):
        compute_load_window(now, lookback=dt.timedelta(days=1), end_offset=dt.timedelta(hours=-1))


def test_config_defaults_and_overrides(shared_settings: OrchestratorSettings) -> None:
    now = dt.datetime(2026, 3, 15, 10, 30, tzinfo=dt.UTC)
    assert get_load_window(now=now, settings=shared_settings) == (
        dt.datetime(2026, 3, 14, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 15, tzinfo=dt.UTC),
    )
    configured = shared_settings.model_copy(
        update={
            "load_window": shared_settings.load_window.model_copy(
                update={"lookback": 7200.0, "align": "hour", "timezone": "Asia/Kolkata", "end_offset": 3600.0}
            )
        }
    )
    start, end = get_load_window(now=now, settings=configured)
    assert (start.isoformat(), end.isoformat()) == ("2026-03-15T13:00:00+05:30", "2026-03-15T15:00:00+05:30")
    start, end = get_load_window(
        now=now, settings=shared_settings, lookback=dt.timedelta(days=3), timezone="Asia/Tokyo"
    )
    assert (start.isoformat(), end.isoformat()) == ("2026-03-12T00:00:00+09:00", "2026-03-15T00:00:00+09:00")


def test_partition_window_on_a_real_run(shared_settings: OrchestratorSettings) -> None:
    seen: dict[str, tuple[dt.datetime, dt.datetime]] = {}
    now = dt.datetime(2026, 3, 15, 10, 30, tzinfo=dt.UTC)

    @asset(partitions_def=DailyPartitionsDefinition(start_date="2026-01-01", timezone="Europe/Berlin"))
    def daily(context) -> None:  # type: ignore[no-untyped-def]
        seen["daily"] = get_load_window(context, now=now, settings=shared_settings)

    @asset(partitions_def=StaticPartitionsDefinition(["eu", "us"]))
    def regional(context) -> None:  # type: ignore[no-untyped-def]
        seen["regional"] = get_load_window(context, now=now, settings=shared_settings)

    @asset
    def plain(context) -> None:  # type: ignore[no-untyped-def]
        seen["plain"] = get_load_window(context, now=now, settings=shared_settings)

    with DagsterInstance.ephemeral() as instance:
        assert materialize([daily], partition_key="2026-02-10", instance=instance).success
        assert materialize([regional], partition_key="eu", instance=instance).success
        assert materialize([plain], instance=instance).success
    start, end = seen["daily"]
    assert (start.isoformat(), end.isoformat()) == ("2026-02-10T00:00:00+01:00", "2026-02-11T00:00:00+01:00")
    expected = (dt.datetime(2026, 3, 14, tzinfo=dt.UTC), dt.datetime(2026, 3, 15, tzinfo=dt.UTC))
    assert seen["regional"] == expected  # not time-partitioned: the configured window
    assert seen["plain"] == expected
