"""What sensor and schedule ticks cost the health worker next to asset events.

The health service (in-process, a real health.db) handles batches of asset materializations alone, then the
same kind of batches each with a minute's worth of automation events besides: 1,000 ticks spread over 200
sensors (10 % of them failing every other minute) and the publisher's heartbeat. Printed: the median time of
a batch of each kind, the added time per tick, and one periodic pass over the automation objects.

    python bench/automation_health.py [--minutes N] [--ticks N] [--assets N]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.bus import Delivery
from libs.common.events import (
    ASSETS,
    AUTOMATION,
    AssetMaterialized,
    AutomationTickData,
    AutomationTicked,
    Event,
    MaterializationData,
    PublisherHeartbeat,
    PublisherHeartbeatData,
    new_event,
)
from libs.common.log import configure_logging
from libs.common.settings import load_settings
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store

SENSORS = 200


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def materializations(minute: int, count: int, now: float) -> list[Event]:
    return [
        new_event(
            AssetMaterialized,
            "asset.materialized",
            identity=f"m{minute}:{i}",
            source="bench",
            occurred_at=_dt(now - 1),
            data=MaterializationData(asset_key=f"a{i}", run_id=f"r{minute}:{i}", row_count=1000),
        )
        for i in range(count)
    ]


def automation_minute(minute: int, ticks: int, now: float) -> list[Event]:
    events: list[Event] = []
    for i in range(ticks):
        failing = minute % 2 == 1 and i % SENSORS < SENSORS // 10
        status = "FAILURE" if failing else "SUCCESS"
        tick_id = minute * ticks + i
        data = AutomationTickData(
            kind="sensor",
            name=f"s{i % SENSORS}",
            code_location="bench",
            status=status,
            tick_id=tick_id,
            tick_at=_dt(now - 60 + i * 60 / ticks),
            interval_s=30,
            error="RuntimeError: source down" if failing else None,
        )
        events.append(
            new_event(AutomationTicked, "automation.tick", identity=str(tick_id), data=data, source="bench")
        )
    beat = PublisherHeartbeatData(code_location="bench", tick_at=_dt(now), interval_s=5)
    events.append(
        new_event(
            PublisherHeartbeat,
            "automation.publisher_heartbeat",
            identity=f"hb{minute}",
            data=beat,
            source="bench",
        )
    )
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--ticks", type=int, default=1000)
    parser.add_argument("--assets", type=int, default=200)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="ams-bench-automation-")
    settings = load_settings(
        HealthWorkerSettings,
        dagster_home=home,
        stores={"data_dir": home},
        logging={"file": None, "level": "WARNING"},
    )
    configure_logging(settings)
    store = open_store(settings)
    engine = HealthService(store, settings)
    assets_only: list[float] = []
    with_ticks: list[float] = []
    seq = 0
    for minute in range(2 * args.minutes):
        now = time.time()
        events = materializations(minute, args.assets, now)
        mixed = minute % 2 == 1
        if mixed:
            events += automation_minute(minute, args.ticks, now)
        batch = []
        for event in events:
            seq += 1
            stream = AUTOMATION if event.type.startswith("automation.") else ASSETS
            batch.append(Delivery(stream, f"{seq}-0", event))  # type: ignore[arg-type]
        started = time.perf_counter()
        engine.handle(batch)
        (with_ticks if mixed else assets_only).append(time.perf_counter() - started)
    started = time.perf_counter()
    engine.evaluate_automation()
    pass_s = time.perf_counter() - started
    store.close()
    alone, mixed_s = statistics.median(assets_only), statistics.median(with_ticks)
    result = {
        "assets_per_batch": args.assets,
        "ticks_per_batch": args.ticks,
        "sensors": SENSORS,
        "batch_assets_only_ms": round(alone * 1000, 1),
        "batch_with_ticks_ms": round(mixed_s * 1000, 1),
        "added_us_per_tick": round((mixed_s - alone) / (args.ticks + 1) * 1e6, 1),
        "automation_pass_ms": round(pass_s * 1000, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
