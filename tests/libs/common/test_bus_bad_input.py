"""Malformed messages of every kind go to the dead-letter stream with their error; consumption goes on."""

from __future__ import annotations

import json
import time
import uuid

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from libs.common.bus import Bus, Consumer, Delivery, connect
from libs.common.events import (
    RUNS,
    RunData,
    RunEvent,
    implausible_time,
    latest_plausible,
    new_event,
    parse_event,
    wrong_stream,
)
from libs.common.settings import BusSettings, Settings

VALID = json.loads(
    new_event(
        RunEvent,
        "run.failed",
        identity="x",
        data=RunData(run_id="x", job_name="j", status="FAILURE"),
        source="t",
    ).model_dump_json()
)


def _mutations() -> st.SearchStrategy[dict[str, bytes | str]]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=10,
    )

    def wrong_field(pair: tuple[str, object]) -> dict[str, bytes | str]:
        key, value = pair
        envelope = json.loads(json.dumps(VALID))
        if key.startswith("data."):
            envelope["data"][key[5:]] = value
        else:
            envelope[key] = value
        return {"event": json.dumps(envelope), "type": "run.failed"}

    wrong_types = (
        st.tuples(
            st.sampled_from(
                [
                    "id",
                    "type",
                    "occurred_at",
                    "schema_version",
                    "data",
                    "data.status",
                    "data.run_id",
                    "data.duration_s",
                    "data.asset_keys",
                ]
            ),
            json_values,
        )
        .filter(lambda p: p[1] != VALID.get(p[0], VALID["data"].get(p[0][5:])))
        .map(wrong_field)
    )
    raw_bytes = st.binary(min_size=1, max_size=300).map(lambda b: {"event": b, "type": "x"})
    huge = st.integers(min_value=1, max_value=3).map(
        lambda n: {"event": json.dumps({**VALID, "id": "a" * (n * 400_000)}), "type": "run.failed"}
    )
    wrong_version = (
        st.integers()
        .filter(lambda v: v != 1)
        .map(lambda v: {"event": json.dumps({**VALID, "schema_version": v}), "type": "run.failed"})
    )
    no_event = st.dictionaries(st.sampled_from(["type", "payload", "x"]), st.text(max_size=10), min_size=1)
    return st.one_of(wrong_types, raw_bytes, huge, wrong_version, no_event)


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bad=st.lists(_mutations(), min_size=1, max_size=6))
def test_malformed_messages_dead_lettered_worker_keeps_going(
    settings: Settings, bad: list[dict[str, bytes | str]]
) -> None:
    cfg = settings.bus.model_copy(update={"prefix": f"{settings.bus.prefix}-{uuid.uuid4().hex[:6]}"})
    bus = Bus(connect(settings.redis, block_ms=cfg.block_ms), cfg)
    key = bus.key(RUNS)
    for fields in bad:
        bus.client.xadd(key, fields)  # type: ignore[arg-type]
    good = new_event(
        RunEvent,
        "run.succeeded",
        identity=str(uuid.uuid4()),
        data=RunData(run_id="ok", job_name="j", status="SUCCESS"),
        source="t",
    )
    bus.publish_many(RUNS, [good])
    seen: list[Delivery] = []
    consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=seen.extend)
    deadline = time.monotonic() + 20
    while not any(d.event.id == good.id for d in seen) and time.monotonic() < deadline:
        consumer.poll(block=True)
    # Some mutations are still valid events (an int where a float is expected): those are handled.
    valid_ids = [_valid_id(fields) for fields in bad]
    try:
        assert [d.event.id for d in seen] == [i for i in valid_ids if i] + [good.id]
        dead = bus.client.xrange(key + ":dlq")
        assert len(dead) == sum(1 for i in valid_ids if i is None)
        assert all(fields[b"error"] for _, fields in dead)
        assert bus.client.xpending(key, "g")["pending"] == 0
    finally:
        bus.client.delete(key, key + ":dlq")
        bus.client.close()


def _valid_id(fields: dict[str, bytes | str]) -> str | None:
    """The id of the event the consumer hands on: valid, on its stream, its times plausible."""
    try:
        event = parse_event(fields["event"])
    except (KeyError, ValidationError, ValueError):
        return None
    if wrong_stream(event, RUNS) or implausible_time(event, latest_plausible(BusSettings().max_clock_skew_s)):
        return None
    return event.id


def test_trimmed_pending_entries_are_settled(settings: Settings) -> None:
    bus = Bus(connect(settings.redis), settings.bus)
    key = bus.key(RUNS)
    Consumer(bus=bus, group="g", name="dead", streams=[RUNS], handler=lambda _: None).ensure_groups()
    bus.client.xadd(key, {"event": "{}", "type": "x"})
    bus.client.xreadgroup("g", "dead", {key: ">"}, count=10)
    bus.client.xtrim(key, maxlen=0)  # the pending entry's content is gone
    consumer = Consumer(bus=bus, group="g", name="alive", streams=[RUNS], handler=lambda _: None)
    deadline = time.monotonic() + 10
    while bus.client.xpending(key, "g")["pending"] and time.monotonic() < deadline:
        consumer.poll(block=True)
    assert bus.client.xpending(key, "g")["pending"] == 0


# -- issue 16: valid but implausible events are dead-lettered with their reason at once ---------------------


def _metric(stream: str, reason: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "ams_dead_letters_total", {"stream": stream, "group": "g", "reason": reason}
    )
    return value or 0.0


def _health(evaluated_at: str, occurred_at: str | None = None) -> dict[str, str]:
    from libs.common.events import HealthChanged, HealthChangedData, utcnow

    event = new_event(
        HealthChanged,
        "health.changed",
        identity=str(uuid.uuid4()),
        source="t",
        data=HealthChangedData(
            asset_key="a", status="FAILED", previous_status="HEALTHY", evaluated_at=utcnow()
        ),
    )
    envelope = json.loads(event.model_dump_json())
    envelope["data"]["evaluated_at"] = evaluated_at
    if occurred_at is not None:
        envelope["occurred_at"] = occurred_at
    return {"event": json.dumps(envelope), "type": "health.changed"}


def _run(occurred_at: str, **data: str) -> dict[str, str]:
    envelope = json.loads(json.dumps(VALID))
    envelope["id"] = str(uuid.uuid4())
    envelope["occurred_at"] = occurred_at
    envelope["data"].update(data)
    return {"event": json.dumps(envelope), "type": envelope["type"]}


def _consume(
    settings: Settings, entries: list[tuple[str, dict[str, str]]], streams: list[str], **bus: object
) -> tuple[list[Delivery], list[dict[bytes, bytes]], Bus]:
    """Publish raw entries, consume them with one poll per stream round; (handled, dead letters, bus)."""
    cfg = settings.bus.model_copy(update={"prefix": f"{settings.bus.prefix}-{uuid.uuid4().hex[:6]}", **bus})
    bus_ = Bus(connect(settings.redis, block_ms=cfg.block_ms), cfg)
    for stream, fields in entries:
        bus_.client.xadd(bus_.key(stream), fields)  # type: ignore[arg-type]
    seen: list[Delivery] = []
    consumer = Consumer(bus=bus_, group="g", name="c", streams=streams, handler=seen.extend)
    settled = 0
    for _ in range(3):  # never through redelivery: every entry is settled by the first reads
        settled += consumer.poll(block=False)
    assert settled == len(entries)
    dead = [f for s in streams for _, f in bus_.client.xrange(bus_.key(s) + ":dlq")]
    for s in streams:
        assert bus_.client.xpending(bus_.key(s), "g")["pending"] == 0
    return seen, dead, bus_


def test_events_from_the_future_are_dead_lettered_with_the_reason(settings: Settings) -> None:
    from datetime import timedelta

    from libs.common.events import HEALTH, utcnow

    soon = (utcnow() + timedelta(seconds=60)).isoformat()
    before = _metric(HEALTH, "clock_skew"), _metric(RUNS, "clock_skew")
    entries = [
        (HEALTH, _health("9999-01-01T00:00:00Z")),
        (HEALTH, _health(utcnow().isoformat(), occurred_at="9999-12-31T23:59:59-14:00")),
        (HEALTH, _health("1969-12-31T23:00:00Z")),
        (RUNS, _run("2999-01-01T00:00:00+00:00")),
        (RUNS, _run(utcnow().isoformat(), ended_at="9000-01-01T00:00:00Z")),
        (RUNS, _run("0001-01-01T00:00:00+14:00")),
        (RUNS, _run(soon)),  # within the allowed skew (300 s by default)
        (HEALTH, _health(soon)),
    ]
    seen, dead, _ = _consume(settings, entries, [RUNS, HEALTH])
    assert len(seen) == 2 and len(dead) == 6
    assert all(f[b"reason"] == b"clock_skew" for f in dead)
    errors = sorted(f[b"error"].decode() for f in dead)
    assert sum("is in the future" in e and "bus.max_clock_skew_s" in e for e in errors) == 4, errors
    assert sum("before 1970-01-01" in e for e in errors) == 2, errors
    assert (_metric(HEALTH, "clock_skew"), _metric(RUNS, "clock_skew")) == (before[0] + 3, before[1] + 3)
    # The allowance is a setting: with none, a minute ahead is too far.
    seen, dead, _ = _consume(settings, [(RUNS, _run(soon))], [RUNS], max_clock_skew_s=0)
    assert seen == [] and dead[0][b"reason"] == b"clock_skew"


def test_valid_events_on_the_wrong_stream_are_dead_lettered(settings: Settings) -> None:
    from libs.common.events import ASSETS, HEALTH, CatalogSnapshot, CatalogSnapshotData

    snapshot = new_event(
        CatalogSnapshot,
        "catalog.snapshot",
        identity="s",
        source="t",
        data=CatalogSnapshotData(code_location="x", fingerprint="f", assets=[]),
    )
    before = _metric(RUNS, "wrong_stream"), _metric(ASSETS, "wrong_stream")
    entries = [
        (RUNS, _health("2020-01-01T00:00:00Z")),
        (ASSETS, snapshot.to_fields()),
        (RUNS, _run("2020-01-01T00:00:00Z")),
    ]
    seen, dead, _ = _consume(settings, entries, [RUNS, ASSETS, HEALTH])
    assert [d.event.type for d in seen] == ["run.failed"]
    assert sorted(f[b"reason"] for f in dead) == [b"wrong_stream", b"wrong_stream"]
    assert any(b"'health.changed' does not belong on stream 'runs'" in f[b"error"] for f in dead)
    assert any(b"'catalog.snapshot' does not belong on stream 'assets'" in f[b"error"] for f in dead)
    assert (_metric(RUNS, "wrong_stream"), _metric(ASSETS, "wrong_stream")) == (before[0] + 1, before[1] + 1)


def test_dead_letters_keep_a_capped_copy_with_the_original_size(settings: Settings) -> None:
    huge = json.dumps({**VALID, "id": "é" * 2_500_000})  # 5 MB of UTF-8, invalid (id too long)
    seen, dead, bus = _consume(
        settings, [(RUNS, {"event": huge, "type": "run.failed"})], [RUNS], dead_letter_max_chars=4096
    )
    ((fields),) = dead
    assert seen == [] and fields[b"reason"] == b"invalid" and fields[b"truncated"] == b"1"
    assert len(fields[b"original_event"].decode()) == 4096
    assert int(fields[b"original_event_bytes"]) == len(huge.encode())
    assert fields[b"original_type"] == b"run.failed" and b"original_type_bytes" not in fields
    assert bus.client.memory_usage(bus.key(RUNS) + ":dlq") < 100_000
