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
from libs.common.events import RUNS, RunData, RunEvent, new_event, parse_event
from libs.common.settings import Settings

VALID = json.loads(
    new_event(RunEvent, "run.failed", identity="x", data=RunData(run_id="x", job_name="j", status="FAILURE"),
              source="t").model_dump_json()
)


def _mutations() -> st.SearchStrategy[dict[str, bytes | str]]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
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

    wrong_types = st.tuples(
        st.sampled_from(["id", "type", "occurred_at", "schema_version", "data", "data.status", "data.run_id",
                         "data.duration_s", "data.asset_keys"]),
        json_values,
    ).filter(lambda p: p[1] != VALID.get(p[0], VALID["data"].get(p[0][5:]))).map(wrong_field)
    raw_bytes = st.binary(min_size=1, max_size=300).map(lambda b: {"event": b, "type": "x"})
    huge = st.integers(min_value=1, max_value=3).map(
        lambda n: {"event": json.dumps({**VALID, "id": "a" * (n * 400_000)}), "type": "run.failed"}
    )
    wrong_version = st.integers().filter(lambda v: v != 1).map(
        lambda v: {"event": json.dumps({**VALID, "schema_version": v}), "type": "run.failed"}
    )
    no_event = st.dictionaries(st.sampled_from(["type", "payload", "x"]), st.text(max_size=10), min_size=1)
    return st.one_of(wrong_types, raw_bytes, huge, wrong_version, no_event)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(bad=st.lists(_mutations(), min_size=1, max_size=6))
def test_malformed_messages_dead_lettered_worker_keeps_going(settings: Settings, bad: list[dict[str, bytes | str]]) -> None:
    cfg = settings.bus.model_copy(update={"prefix": f"{settings.bus.prefix}-{uuid.uuid4().hex[:6]}"})
    bus = Bus(connect(settings.redis, block_ms=cfg.block_ms), cfg)
    key = bus.key(RUNS)
    for fields in bad:
        bus.client.xadd(key, fields)  # type: ignore[arg-type]
    good = new_event(RunEvent, "run.succeeded", identity=str(uuid.uuid4()),
                     data=RunData(run_id="ok", job_name="j", status="SUCCESS"), source="t")
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
    try:
        return parse_event(fields["event"]).id
    except (KeyError, ValidationError, ValueError):
        return None


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
