"""Three health workers in one consumer group on one PostgreSQL store: every event processed into the
store exactly once, none missed, the work shared, throughput reported.

`make test` runs a small stream; AMS_SCALE_EVENTS sets the full count (100k in `make bench`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import psycopg2
import pytest

from asset_manager.commands.simulate import generate
from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import ASSETS, RUNS, Event
from libs.common.testing import ServiceProcess, wait_for, worker_env

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
EVENTS = int(os.environ.get("AMS_SCALE_EVENTS", "6000"))
REPLICAS = 3


def test_three_health_workers_share_one_postgres_store(
    settings: AppSettings, postgres_url: str, tmp_path: Path
) -> None:
    base = worker_env(
        tmp_path / "home",
        settings.redis.url,
        settings.bus.prefix,
        AMS_BUS__BATCH_SIZE="500",
        AMS_STORES__HEALTH_URL=postgres_url,
        AMS_LOGGING__FILE="",
        AMS_LOGGING__LEVEL="WARNING",
    )
    workers = [
        ServiceProcess.service(
            "health", {**base, "AMS_BUS__CONSUMER_NAME": f"health-{i}"}, tmp_path / f"health-{i}.out"
        )
        for i in range(REPLICAS)
    ]
    bus = Bus(connect(settings.redis), settings.bus)
    try:
        wait_for(lambda: all(w.answers() and w.ready() for w in workers), 60, "replicas ready")
        published: list[tuple[str, Event]] = list(
            generate(assets=60, events=EVENTS, seed=21, inject_rate=0.03)
        )
        started = time.perf_counter()
        for i in range(0, len(published), 500):
            chunk = published[i : i + 500]
            for stream in (ASSETS, RUNS):
                bus.publish_many(stream, [e for s, e in chunk if s == stream])
        deadline = time.monotonic() + 600
        while bus.unsettled("health", [RUNS, ASSETS]) != 0:
            assert time.monotonic() < deadline, "the workers did not catch up"
            assert all(w.answers() for w in workers), "a worker died"
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        shares = [_consumed(w.metrics()) for w in workers]
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0] * REPLICAS

    conn = psycopg2.connect(postgres_url)
    cur = conn.cursor()
    cur.execute("SELECT event_id FROM materializations")
    stored = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT asset_key, run_id FROM executions")
    executions = set(cur.fetchall())
    cur.execute("SELECT event_id FROM processed_events")
    processed = {r[0] for r in cur.fetchall()}
    conn.close()
    materialized = {e.id for _, e in published if e.type == "asset.materialized"}
    assert len(stored) == len(set(stored)), "an event was processed twice into the store"
    assert set(stored) == materialized, "an event was missed"
    assert executions == {(e.data.asset_keys[0], e.data.run_id) for s, e in published if s == RUNS}  # type: ignore[attr-defined]
    assert {e.id for _, e in published} <= processed
    assert sum(shares) >= len(published) and all(share > 0 for share in shares), f"work not shared: {shares}"
    print(
        json.dumps(
            {
                "events": len(published),
                "replicas": REPLICAS,
                "throughput_eps": round(len(published) / elapsed, 1),
                "per_worker": shares,
            }
        )
    )


def _consumed(metrics: str) -> int:
    found = re.findall(r'ams_events_consumed_total\{group="health",stream="(?:runs|assets)"\} (\S+)', metrics)
    return int(sum(float(v) for v in found))
