"""SIGKILL the health and alerts workers again and again while a simulated event stream runs: afterwards
every event is in health.db exactly once, every health change reached alerts, and every notification was
received, exactly once by `webhook-id`, nothing dead-lettered.

`make test` runs a small stream; AMS_FAULT_EVENTS / AMS_FAULT_KILLS set the full counts (`make bench`).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_manager.commands.simulate import generate
from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import ASSETS, HEALTH, RUNS, Event
from libs.common.redis_server import LocalRedis
from libs.common.settings import load_settings
from libs.common.store import stored_event_id
from libs.common.testing import ServiceProcess, wait_for, worker_env
from services.alerts.testing import RecordingReceiver

pytestmark = pytest.mark.faults
SENDER_CONCURRENCY = 4
ROOT = Path(__file__).resolve().parents[2]
EVENTS = int(os.environ.get("AMS_FAULT_EVENTS", "6000"))
KILLS = int(os.environ.get("AMS_FAULT_KILLS", "20"))
SECRET = "whsec_" + "a2lsbC10ZXN0LXNlY3JldC1mb3ItZmF1bHRzLW9ubHk="


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[LocalRedis, RecordingReceiver, dict[str, str]]]:
    server = LocalRedis(directory=tmp_path / "redis").start()
    receiver = RecordingReceiver().start()
    env = worker_env(
        tmp_path / "home",
        server.url,
        "kill",
        AMS_BUS__CLAIM_IDLE_MS="2000",
        AMS_BUS__CLAIM_INTERVAL_S="1",
        AMS_LOGGING__FILE=str(tmp_path / "system.log"),
        AMS_ALERTS__RECEIVERS=json.dumps([{"name": "ops", "url": receiver.url, "secret_env": "KILL_WHSEC"}]),
        AMS_ALERTS__RETRY_BASE_S="0.2",
        AMS_ALERTS__SENDER_CONCURRENCY=str(SENDER_CONCURRENCY),
        AMS_ALERTS__RETRY_MAX_DELAY_S="1",
        AMS_ALERTS__FLAP_WINDOW_S="0",
        KILL_WHSEC=SECRET,
    )
    yield server, receiver, env
    receiver.stop()
    server.stop()


def test_sigkill_workers_repeatedly_loses_and_doubles_nothing(
    setup: tuple[LocalRedis, RecordingReceiver, dict[str, str]], tmp_path: Path
) -> None:
    server, receiver, env = setup
    home = tmp_path / "home"
    workers = {
        name: ServiceProcess.service(name, env, tmp_path / f"{name}.out") for name in ("health", "alerts")
    }
    settings = load_settings(
        AppSettings, redis={"url": server.url}, bus={"prefix": "kill"}, logging={"file": None}
    )
    bus = Bus(connect(settings.redis), settings.bus)
    client = bus.client
    published: list[tuple[str, Event]] = list(
        generate(
            assets=40,
            events=EVENTS,
            seed=11,
            inject=("failure", "volume", "schema"),
            inject_rate=0.08,
            history=0.3,
        )
    )
    done = threading.Event()

    def publish() -> None:
        for i in range(0, len(published), 100):  # paced so that the kills land throughout the stream
            chunk = published[i : i + 100]
            for stream in (ASSETS, RUNS):
                bus.publish_many(stream, [e for s, e in chunk if s == stream])
            time.sleep(max(0.02, 20.0 / (len(published) / 100)))
        done.set()

    wait_for(lambda: all(w.answers() for w in workers.values()), 60, "workers up")
    producer = threading.Thread(target=publish, daemon=True)
    producer.start()
    rng = random.Random(5)
    kills = 0
    while kills < KILLS or not done.is_set():
        name = ("health", "alerts")[kills % 2]
        wait_for(workers[name].answers, 60, f"{name} back up")
        time.sleep(rng.uniform(0.1, 0.6))  # mid-batch, mid-delivery
        workers[name].kill()
        workers[name].start()
        kills += 1
    producer.join(60)
    wait_for(lambda: all(w.answers() for w in workers.values()), 60, "workers up after the last kill")

    monitor, health = home / "monitor.db", home / "health.db"
    wait_for(lambda: bus.unsettled("health", [RUNS, ASSETS]) == 0, 180, "health caught up")
    wait_for(lambda: bus.unsettled("alerts", [HEALTH]) == 0, 180, "alerts caught up")
    wait_for(
        lambda: (
            not rows(
                monitor, "SELECT 1 FROM notifications WHERE status NOT IN ('delivered', 'muted', 'unrouted')"
            )
        ),
        180,
        "every notification delivered",
    )
    assert {name: w.stop() for name, w in workers.items()} == {"health": 0, "alerts": 0}

    # Every published event is in health.db exactly once.
    materialized = {e.id for s, e in published if e.type == "asset.materialized"}
    failed = {e.id for s, e in published if e.type == "asset.materialization_failed"}
    stored = [r[0] for r in rows(health, "SELECT event_id FROM materializations")]
    assert len(stored) == len(set(stored)) and set(stored) == materialized
    stored_failures = [r[0] for r in rows(health, "SELECT event_id FROM materialization_failures")]
    assert len(stored_failures) == len(set(stored_failures)) and set(stored_failures) == failed
    runs = {(e.data.asset_keys[0], e.data.run_id) for s, e in published if s == RUNS}  # type: ignore[attr-defined]
    assert set(rows(health, "SELECT asset_key, run_id FROM executions")) == runs
    processed = {stored_event_id(r[0]) for r in rows(health, "SELECT event_id FROM processed_events")}
    assert {e.id for _, e in published} <= processed
    # Every health change health published reached alerts.
    transitions = {r[0] for r in rows(health, "SELECT event_id FROM health_transitions")}
    assert transitions and transitions <= {
        stored_event_id(r[0]) for r in rows(monitor, "SELECT event_id FROM processed_events")
    }
    # Every notification was received, exactly once by webhook-id; nothing else arrived.
    delivered = {str(r[0]) for r in rows(monitor, "SELECT id FROM notifications WHERE status = 'delivered'")}
    received = [r.webhook_id for r in receiver.accepted()]
    assert delivered and set(received) == delivered
    duplicates = len(received) - len(set(received))
    # A kill of alerts between 2xx answers and their commit resends what was in flight (at most the sender's
    # concurrency per kill); the receiver dedupes by webhook-id.
    alerts_kills = kills // 2
    assert duplicates <= alerts_kills * SENDER_CONCURRENCY
    for stream in (RUNS, ASSETS, HEALTH):
        assert client.xlen(f"kill:{stream}:dlq") == 0
    print(
        json.dumps(
            {
                "events": len(published),
                "kills": kills,
                "notifications": len(delivered),
                "redelivered_webhooks": duplicates,
            }
        )
    )
