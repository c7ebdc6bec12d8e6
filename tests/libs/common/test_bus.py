"""The bus on a real Redis: at-least-once delivery, reclaiming, dead letters, dedupe, NOGROUP recovery."""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import redis
from pydantic import SecretStr

from libs.common.bus import Bus, Consumer, Delivery, connect
from libs.common.events import RUNS, RunData, RunEvent, new_event
from libs.common.redis_server import LocalRedis
from libs.common.settings import Settings
from libs.common.store import Migration, Store


def run_event(n: int) -> RunEvent:
    return new_event(
        RunEvent,
        "run.succeeded",
        identity=f"run-{n}:SUCCESS",
        data=RunData(run_id=f"run-{n}", job_name="job", status="SUCCESS"),
        source="test",
    )


def make_bus(settings: Settings) -> Bus:
    return Bus(connect(settings.redis, block_ms=settings.bus.block_ms), settings.bus)


def poll_until(consumer: Consumer, done: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        consumer.poll(block=True)


def test_publish_consume_and_ack(settings: Settings) -> None:
    bus = make_bus(settings)
    bus.publish_many(RUNS, [run_event(i) for i in range(25)])
    seen: list[Delivery] = []
    consumer = Consumer(bus=bus, group="g", name="c1", streams=[RUNS], handler=seen.extend)
    poll_until(consumer, lambda: len(seen) == 25)
    assert [d.event.data.run_id for d in seen] == [f"run-{i}" for i in range(25)]  # type: ignore[union-attr]
    assert bus.client.xpending(bus.key(RUNS), "g")["pending"] == 0


def test_group_created_after_publish_still_sees_earlier_events(settings: Settings) -> None:
    bus = make_bus(settings)
    bus.publish_many(RUNS, [run_event(1)])
    seen: list[Delivery] = []
    poll_until(
        Consumer(bus=bus, group="late", name="c", streams=[RUNS], handler=seen.extend), lambda: len(seen) == 1
    )


def test_consumer_killed_before_ack_loses_nothing(settings: Settings) -> None:
    bus = make_bus(settings)
    Consumer(bus=bus, group="g", name="dead", streams=[RUNS], handler=lambda _: None).ensure_groups()
    bus.publish_many(RUNS, [run_event(i) for i in range(10)])
    # "dead" takes the entries and dies before acknowledging them.
    taken = bus.client.xreadgroup("g", "dead", {bus.key(RUNS): ">"}, count=100)
    assert len(taken[0][1]) == 10
    seen: list[Delivery] = []
    survivor = Consumer(bus=bus, group="g", name="alive", streams=[RUNS], handler=seen.extend)
    poll_until(survivor, lambda: len(seen) == 10)
    assert sorted(d.event.data.run_id for d in seen) == sorted(f"run-{i}" for i in range(10))  # type: ignore[union-attr]
    assert bus.client.xpending(bus.key(RUNS), "g")["pending"] == 0


def test_restarted_consumer_drains_its_own_pending_first(settings: Settings) -> None:
    bus = make_bus(
        settings.model_copy(update={"bus": settings.bus.model_copy(update={"claim_idle_ms": 3_600_000})})
    )
    Consumer(bus=bus, group="g", name="me", streams=[RUNS], handler=lambda _: None).ensure_groups()
    bus.publish_many(RUNS, [run_event(i) for i in range(3)])
    bus.client.xreadgroup("g", "me", {bus.key(RUNS): ">"}, count=100)  # delivered, then "crash"
    seen: list[Delivery] = []
    again = Consumer(bus=bus, group="g", name="me", streams=[RUNS], handler=seen.extend)
    assert again.poll(block=False) == 3  # no claim timeout involved: its own pending list is read first
    assert len(seen) == 3


def test_malformed_messages_are_dead_lettered_and_consumption_goes_on(settings: Settings) -> None:
    bus = make_bus(settings)
    key = bus.key(RUNS)
    bus.client.xadd(key, {"event": "{not json", "type": "run.failed"})
    bus.client.xadd(key, {"something": "else"})
    bus.client.xadd(key, {"event": b"\xff\xfe\x00invalid utf8", "type": "x"})
    bus.client.xadd(
        key, {"event": '{"id": "x", "type": "run.failed", "occurred_at": 5}', "type": "run.failed"}
    )
    # A well-formed envelope with invalid UTF-8 inside a string is refused too, not read with replacements.
    bus.client.xadd(
        key, {"event": run_event(2).model_dump_json().encode().replace(b'"job"', b'"\xff\xfe"'), "type": "x"}
    )
    bus.publish_many(RUNS, [run_event(1)])
    seen: list[Delivery] = []
    consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=seen.extend)
    poll_until(consumer, lambda: len(seen) == 1)
    dead = bus.client.xrange(key + ":dlq")
    assert len(dead) == 5
    errors = [fields[b"error"].decode() for _, fields in dead]
    assert all(e.startswith("invalid event") for e in errors)
    assert b"original_event" in dead[0][1] and dead[0][1][b"group"] == b"g"
    assert bus.client.xpending(key, "g")["pending"] == 0


def test_poison_event_dead_lettered_after_max_deliveries_others_handled(settings: Settings) -> None:
    bus = make_bus(settings.model_copy(update={"bus": settings.bus.model_copy(update={"max_deliveries": 2})}))
    poison = run_event(3)
    bus.publish_many(RUNS, [run_event(i) for i in range(6)])
    handled: list[str] = []

    def handler(batch: list[Delivery]) -> None:
        if any(d.event.id == poison.id for d in batch):
            raise ValueError("cannot handle run-3")
        handled.extend(d.event.id for d in batch)

    consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=handler)
    poll_until(consumer, lambda: bus.client.xlen(bus.key(RUNS) + ":dlq") == 1)
    assert sorted(handled) == sorted(run_event(i).id for i in range(6) if i != 3)
    ((_, fields),) = bus.client.xrange(bus.key(RUNS) + ":dlq")
    assert b"delivered 3 times" in fields[b"error"]
    assert bus.client.xpending(bus.key(RUNS), "g")["pending"] == 0


def test_a_poison_in_a_large_batch_is_isolated_by_halving_in_stream_order(settings: Settings) -> None:
    bus = make_bus(settings)
    events = [run_event(i) for i in range(1000)]
    poison = events[637]
    bus.publish_many(RUNS, events)
    calls: list[int] = []
    handled: list[str] = []

    def handler(batch: list[Delivery]) -> None:
        calls.append(len(batch))
        if any(d.event.id == poison.id for d in batch):
            raise ValueError("poison")
        handled.extend(d.event.id for d in batch)

    consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=handler)
    assert consumer.poll(block=False) == 999  # the poison stays pending for its redelivery
    assert handled == [e.id for e in events if e is not poison]
    assert len(calls) <= 2 * 10 + 1  # halving: two calls per level of a 1000-entry batch, not one per entry


def test_infrastructure_errors_retry_in_process_without_dead_lettering(settings: Settings) -> None:
    bus = make_bus(settings.model_copy(update={"bus": settings.bus.model_copy(update={"max_deliveries": 1})}))
    bus.publish_many(RUNS, [run_event(1)])
    attempts: list[int] = []

    def handler(batch: list[Delivery]) -> None:
        attempts.append(len(batch))
        if len(attempts) <= 3:
            raise sqlite3.OperationalError("database or disk is full")

    consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=handler)
    failures = 0
    deadline = time.monotonic() + 10
    while len(attempts) < 4 and time.monotonic() < deadline:
        try:
            consumer.poll(block=True)
        except sqlite3.OperationalError:
            failures += 1
    assert failures == 3 and attempts == [1, 1, 1, 1]
    assert bus.client.xlen(bus.key(RUNS) + ":dlq") == 0
    assert bus.client.xpending(bus.key(RUNS), "g")["pending"] == 0


def test_redelivered_event_changes_the_store_once(settings: Settings, tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.db"), [Migration(1, "t", "CREATE TABLE runs (run_id TEXT)")])
    bus = make_bus(settings)
    event = run_event(7)
    bus.publish_many(RUNS, [event, event, run_event(8)])  # a producer retry republished the same event

    def handler(batch: list[Delivery]) -> None:
        with store.write() as tx:
            by_id = {d.event.id: d for d in batch}
            for event_id in Store.claim_events(tx, list(by_id)):
                tx.execute("INSERT INTO runs VALUES (?)", (by_id[event_id].event.data.run_id,))  # type: ignore[union-attr]

    consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=handler)
    consumer.ensure_groups()
    poll_until(consumer, lambda: bus.unsettled("g", [RUNS]) == 0)
    bus.publish_many(RUNS, [event])  # and once more, much later
    poll_until(consumer, lambda: bus.unsettled("g", [RUNS]) == 0)
    rows = [r[0] for r in store.connection().execute("SELECT run_id FROM runs ORDER BY run_id")]
    assert rows == ["run-7", "run-8"]


def test_group_recreated_when_stream_vanishes(settings: Settings) -> None:
    bus = make_bus(settings)
    seen: list[Delivery] = []
    consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=seen.extend)
    bus.publish_many(RUNS, [run_event(1)])
    poll_until(consumer, lambda: len(seen) == 1)
    bus.client.delete(bus.key(RUNS))  # as after a Redis restart without persistence
    consumer.poll(block=False)  # NOGROUP: recreated on the next round
    bus.publish_many(RUNS, [run_event(2)])
    poll_until(consumer, lambda: len(seen) == 2)


def test_blocking_read_returns_within_block_time_on_redis_py_defaults(settings: Settings) -> None:
    # redis-py 8 would stall ~60 s if BLOCK exceeded the socket timeout; connect() keeps them apart.
    client = connect(settings.redis, block_ms=7000)
    assert client.connection_pool.connection_kwargs["socket_timeout"] > 7
    client.close()


def test_connect_uses_password(settings: Settings) -> None:
    secured = LocalRedis(password="pw-123456").start()
    try:
        cfg = settings.redis.model_copy(update={"url": secured.url, "password": SecretStr("pw-123456")})
        assert connect(cfg).ping()
        cfg = settings.redis.model_copy(update={"url": secured.url, "password": None})
        try:
            connect(cfg).ping()
            raise AssertionError("unauthenticated ping should fail")
        except redis.AuthenticationError:
            pass
        except redis.ResponseError as exc:
            assert "NOAUTH" in str(exc) or "auth" in str(exc).lower()
    finally:
        secured.stop()


def test_crash_looping_consumer_does_not_dead_letter_good_events(settings: Settings) -> None:
    """A worker killed mid-batch again and again redelivers its batch each time: past max_deliveries the
    entries are handled one by one, and only a handler failure (or 4 x max_deliveries) dead-letters."""
    bus = make_bus(
        settings.model_copy(
            update={"bus": settings.bus.model_copy(update={"max_deliveries": 2, "claim_idle_ms": 3_600_000})}
        )
    )
    key = bus.key(RUNS)
    Consumer(bus=bus, group="g", name="me", streams=[RUNS], handler=lambda _: None).ensure_groups()
    bus.publish_many(RUNS, [run_event(i) for i in range(4)])
    for _ in range(4):  # four "crashes" after reading, before acknowledging: 4 deliveries each
        bus.client.xreadgroup("g", "me", {key: "0" if _ else ">"}, count=100)
    poison = run_event(2).id
    seen: list[str] = []

    def handler(batch: list[Delivery]) -> None:
        assert len(batch) == 1, "suspects are handled one by one"
        if batch[0].event.id == poison:
            raise ValueError("still failing")
        seen.append(batch[0].event.id)

    again = Consumer(bus=bus, group="g", name="me", streams=[RUNS], handler=handler)
    assert again.poll(block=False) == 4
    assert sorted(seen) == sorted(run_event(i).id for i in (0, 1, 3))
    ((_, fields),) = bus.client.xrange(key + ":dlq")
    assert b"still failing" in fields[b"error"] and b"delivered 5 times" in fields[b"error"]
    assert bus.client.xpending(key, "g")["pending"] == 0


def test_entry_delivered_far_too_often_is_dead_lettered_unhandled(settings: Settings) -> None:
    bus = make_bus(
        settings.model_copy(
            update={"bus": settings.bus.model_copy(update={"max_deliveries": 1, "claim_idle_ms": 3_600_000})}
        )
    )
    key = bus.key(RUNS)
    Consumer(bus=bus, group="g", name="me", streams=[RUNS], handler=lambda _: None).ensure_groups()
    bus.publish_many(RUNS, [run_event(1)])
    for n in range(4):  # a poison that kills the process on every delivery
        bus.client.xreadgroup("g", "me", {key: "0" if n else ">"}, count=10)
    handled: list[Delivery] = []
    assert (
        Consumer(bus=bus, group="g", name="me", streams=[RUNS], handler=handled.extend).poll(block=False) == 1
    )
    assert handled == [] and bus.client.xlen(key + ":dlq") == 1


def test_the_collector_pauses_for_a_batch_and_resumes_after_it_even_on_failure(settings: Settings) -> None:
    bus = make_bus(settings)
    bus.publish_many(RUNS, [run_event(i) for i in range(3)])
    during: list[bool] = []

    def handler(batch: list[Delivery]) -> None:
        during.append(gc.isenabled())
        if len(during) == 1:
            raise sqlite3.OperationalError("disk I/O error")  # an infrastructure error: retried

    consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=handler)
    assert gc.isenabled()
    with contextlib.suppress(sqlite3.OperationalError):
        consumer.poll(block=True)
    assert during == [False] and gc.isenabled()
    poll_until(consumer, lambda: len(during) == 2)  # the batch retried (its entries already read)
    bus.publish_many(RUNS, [run_event(5)])
    poll_until(consumer, lambda: len(during) == 3)
    assert during[2] is False and gc.isenabled()
    gc.disable()  # a process that runs without the collector keeps it off
    try:
        bus.publish_many(RUNS, [run_event(9)])
        poll_until(consumer, lambda: len(during) == 4)
        assert not gc.isenabled()
    finally:
        gc.enable()
