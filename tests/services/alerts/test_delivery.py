"""Durable delivery: the sender against real loopback receivers that fail, throttle, vanish and recover."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from libs.common.bus import Delivery
from libs.common.events import HEALTH, CheckResult, HealthChanged, HealthChangedData, new_event, utcnow
from libs.common.settings import load_settings
from libs.common.store import Store
from services.alerts import queries
from services.alerts.sender import Sender
from services.alerts.service import AlertService
from services.alerts.settings import AlertsSettings, AlertsWorkerSettings
from services.alerts.store import open_store
from services.alerts.testing import Received, RecordingReceiver, Reply

SECRET = "whsec_" + base64.b64encode(b"delivery-test-secret-32-bytes!!!").decode()


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    with RecordingReceiver() as srv:
        yield srv


def make_settings(tmp_path: Path, url: str, **alerts: Any) -> AlertsWorkerSettings:
    return load_settings(
        AlertsWorkerSettings,
        dagster_home=str(tmp_path),
        logging={"file": None},
        alerts={
            "incident_wait_s": 0,  # notices at once: these tests are about other rules
            "receivers": [{"name": "hook", "url": url, "secret_env": "DELIVERY_WHSEC", "timeout_s": 0.5}],
            "retry_base_s": 0.05,
            "retry_max_delay_s": 0.4,
            **alerts,
        },
    )


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_WHSEC", SECRET)


def failing(asset: str, n: int = 1) -> Delivery:
    data = HealthChangedData(
        asset_key=asset,
        status="FAILED",
        previous_status="HEALTHY",
        checks=[CheckResult(check="execution_status", outcome="error", reason="run failed", values={"n": n})],
        evaluated_at=utcnow(),
    )
    return Delivery(
        HEALTH,
        "1-0",
        new_event(HealthChanged, "health.changed", identity=f"{asset}|{n}", data=data, source="t"),
    )


def statuses(store: Store) -> dict[str, str]:
    with store.read() as conn:
        return {r["id"]: r["status"] for r in conn.execute("SELECT id, status FROM notifications")}


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def accepted_once(requests: list[Received]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in requests:
        if 200 <= r.status < 300:
            counts[r.webhook_id or ""] = counts.get(r.webhook_id or "", 0) + 1
    return counts


def test_recovering_receiver_gets_everything_exactly_once(
    tmp_path: Path, receiver: RecordingReceiver
) -> None:
    settings = make_settings(tmp_path, receiver.url, sender_concurrency=3)
    store = open_store(settings)
    sender = Sender(store, settings)
    service = AlertService(store, settings, on_commit=sender.wake)
    port = receiver.port
    receiver.stop()  # first the receiver is gone: connection refused
    sender.start()
    try:
        service.handle([failing(f"asset_{i}") for i in range(6)])
        ids = set(statuses(store))
        assert len(ids) == 6
        wait_until(lambda: len([e for e in _errors(store) if "Connect" in e]) == 6)
        # back, but answering 500s, a slow answer past the 0.5 s timeout, throttling with Retry-After
        receiver = RecordingReceiver(
            port=port,
            script=[
                Reply(status=500),
                Reply(status=502),
                Reply(status=504, delay_s=1.0),
                Reply(status=429, headers={"Retry-After": "1"}),
                Reply(status=503),
            ],
        ).start()
        wait_until(lambda: set(statuses(store).values()) == {"delivered"})
        counts = accepted_once(receiver.requests)
        assert all(c == 1 for c in counts.values())
        for got in receiver.accepted():
            body = RecordingReceiver.verify(got, SECRET)
            assert body["data"]["notification_id"] == got.webhook_id
        assert set(counts) == ids
        assert {r.status for r in receiver.requests} >= {500, 502, 504, 429, 503, 200}
    finally:
        sender.stop()
        receiver.stop()
        store.close()


def _errors(store: Store) -> list[str]:
    with store.read() as conn:
        return [
            r[0] for r in conn.execute("SELECT last_error FROM notifications WHERE last_error IS NOT NULL")
        ]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_retry_after_backoff_rejection_and_max_age(tmp_path: Path, receiver: RecordingReceiver) -> None:
    clock = Clock()
    settings = make_settings(
        tmp_path, receiver.url, retry_base_s=2.0, retry_max_delay_s=60.0, max_age_s=100.0
    )
    store = open_store(settings)
    sender = Sender(store, settings, clock=clock, jitter=lambda: 1.0)
    service = AlertService(store, settings, clock=clock)
    try:
        service.handle([failing("a")])
        (nid,) = statuses(store)

        def row() -> dict[str, Any]:
            with store.read() as conn:
                return dict(conn.execute("SELECT * FROM notifications WHERE id = ?", (nid,)).fetchone())

        receiver.script = [Reply(status=429, headers={"Retry-After": "7"})]
        sender.run_until_idle()
        first = row()
        assert first["status"] == "pending" and first["attempts"] == 1 and first["last_status"] == 429
        assert first["next_attempt_at"] == pytest.approx(clock.now + 7)
        sender.run_until_idle()  # not due yet: nothing sent
        assert len(receiver.requests) == 1

        receiver.script = [Reply(status=500), Reply(status=500)]
        clock.now += 7
        sender.run_until_idle()
        assert row()["next_attempt_at"] == pytest.approx(clock.now + 4)  # 2 s * 2^(2-1), full jitter draw
        clock.now += 4
        sender.run_until_idle()
        assert row()["next_attempt_at"] == pytest.approx(clock.now + 8)

        # past max_age_s the notification is dead, and visible as failed
        receiver.script = [Reply(status=500)] * 10
        clock.now += 80
        sender.run_until_idle()
        dead = row()
        assert dead["status"] == "dead" and "gave up" in dead["last_error"]
        assert [d["id"] for d in queries.deliveries(store, failed_only=True)] == [nid]

        # a 4xx other than 408/429 is not retried
        clock.now += 1000
        service.handle([failing("b")])
        receiver.script = [Reply(status=400, body=b'{"error":"unknown field"}')]
        sender.run_until_idle()
        rejected = [d for d in queries.deliveries(store, failed_only=True) if d["id"] != nid]
        assert rejected[0]["status"] == "dead" and rejected[0]["attempts"] == 1
        assert "not retried: HTTP 400" in rejected[0]["last_error"]
    finally:
        sender.stop()
        store.close()


def test_backoff_grows_with_jitter_and_is_capped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "http://127.0.0.1:9/x", retry_base_s=1.0, retry_max_delay_s=30.0)
    store = open_store(settings)
    low = Sender(store, settings, jitter=lambda: 0.0)
    high = Sender(store, settings, jitter=lambda: 1.0)
    try:
        assert [high.retry_delay(n, None) for n in range(1, 7)] == [1, 2, 4, 8, 16, 30]
        assert [low.retry_delay(n, None) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 15]
        assert high.retry_delay(3, 12.5) == 12.5
        assert high.retry_delay(3, 1e9) == settings.alerts.retry_after_max_s
    finally:
        low.stop()
        high.stop()
        store.close()


def test_resolved_notice_reaches_the_receiver(tmp_path: Path, receiver: RecordingReceiver) -> None:
    settings = make_settings(tmp_path, receiver.url)
    store = open_store(settings)
    sender = Sender(store, settings)
    service = AlertService(store, settings, on_commit=sender.wake)
    sender.start()
    try:
        service.handle([failing("x")])
        data = HealthChangedData(
            asset_key="x", status="HEALTHY", previous_status="FAILED", evaluated_at=utcnow()
        )
        healthy = new_event(HealthChanged, "health.changed", identity="x|ok", data=data, source="t")
        service.handle([Delivery(HEALTH, "2-0", healthy)])
        got = receiver.wait_for(lambda reqs: len(reqs) >= 2)
        kinds = [json.loads(r.body)["type"] for r in got]
        assert sorted(kinds) == ["alert.firing", "alert.resolved"]
    finally:
        sender.stop()
        store.close()


@given(attempts=st.integers(1, 60), draw=st.floats(0, 1), retry_after=st.none() | st.floats(0, 1e7))
@hsettings(max_examples=200, deadline=None)
def test_retry_delay_is_bounded(attempts: int, draw: float, retry_after: float | None) -> None:
    sender = Sender.__new__(Sender)  # only the arithmetic: no store, no threads
    sender.cfg = AlertsSettings(retry_base_s=2.0, retry_max_delay_s=600.0, retry_after_max_s=900.0)
    sender.jitter = lambda: draw
    delay = sender.retry_delay(attempts, retry_after)
    if retry_after is not None:
        assert delay == min(retry_after, 900.0)
    else:
        ceiling = min(600.0, 2.0 * 2 ** (attempts - 1))
        assert ceiling / 2 <= delay <= ceiling


def test_expired_before_an_attempt_is_dead_without_sending(
    tmp_path: Path, receiver: RecordingReceiver
) -> None:
    clock = Clock()
    settings = make_settings(tmp_path, receiver.url, max_age_s=60.0)
    store = open_store(settings)
    sender = Sender(store, settings, clock=clock)
    try:
        AlertService(store, settings, clock=clock).handle([failing("late")])
        clock.now += 61  # e.g. the worker was down for longer than max_age_s
        sender.run_until_idle()
        (row,) = queries.deliveries(store, failed_only=True)
        assert row["status"] == "dead" and "older than max_age_s" in row["last_error"]
        assert receiver.requests == []
    finally:
        sender.stop()
        store.close()


def test_a_resolve_never_overtakes_its_trigger(tmp_path: Path, receiver: RecordingReceiver) -> None:
    clock = Clock()
    settings = make_settings(tmp_path, receiver.url, retry_base_s=10.0, retry_max_delay_s=60.0)
    store = open_store(settings)
    sender = Sender(store, settings, clock=clock, jitter=lambda: 1.0)
    service = AlertService(store, settings, clock=clock)
    try:
        service.handle([failing("a")])
        receiver.script = [Reply(status=503)]
        sender.run_until_idle()  # the trigger failed; retried in 10 s
        clock.now += 1
        data = HealthChangedData(
            asset_key="a", status="HEALTHY", previous_status="FAILED", evaluated_at=utcnow()
        )
        healthy = new_event(HealthChanged, "health.changed", identity="a|ok", data=data, source="t")
        service.handle([Delivery(HEALTH, "2-0", healthy)])
        service.handle([failing("b")])  # another alert is not held up
        sender.run_until_idle()
        assert [json.loads(r.body)["data"]["asset_key"] for r in receiver.accepted()] == ["b"]
        clock.now += 10
        sender.run_until_idle()
        sender.run_until_idle()
        kinds = [
            (json.loads(r.body)["data"]["asset_key"], json.loads(r.body)["type"]) for r in receiver.accepted()
        ]
        assert kinds == [("b", "alert.firing"), ("a", "alert.firing"), ("a", "alert.resolved")]
    finally:
        sender.stop()
        store.close()
