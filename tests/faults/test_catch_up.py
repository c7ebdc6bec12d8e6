"""Quiet catch-up: 60 days of history for 50 assets waiting in Redis for stopped workers. Started, the health
and alerts workers page no one about the past: no notice that the backlog itself resolves, and exactly the
alerts a worker that never stopped would have open are open, each announced once.

The reference is the same history fed in real time to the same services in-process, with a clock that
follows the events (a batch per day, as a worker keeping up would see it), then evaluated at the wall clock.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from libs.common.bus import Bus, connect
from libs.common.events import (
    ASSET_CHANGES,
    ASSETS,
    RUNS,
    AssetChanged,
    AssetChangeData,
    AssetMaterializationFailed,
    AssetMaterialized,
    AssetSpecData,
    Event,
    MaterializationData,
    MaterializationFailedData,
    RunData,
    RunEvent,
    new_event,
)
from libs.common.settings import load_settings
from libs.common.testing import ServiceProcess, wait_for
from services.alerts.testing import RecordingReceiver
from services.health.settings import HealthWorkerSettings
from tests.faults.history import (
    DAY,
    assert_nothing_about_the_past,
    catch_up_env,
    reference,
    settle,
)

pytestmark = pytest.mark.faults
ASSETS_N = 50
DAYS = 60


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def history(end: float) -> tuple[list[tuple[str, Event]], list[list[tuple[str, Event]]]]:
    """(specs, events per day) of 50 assets materialized daily for 60 days, the last day ending at `end`.

    The past holds problems the backlog resolves (a failure on day 20 for assets 0-9, fixed the next day; a
    row-count drop on day 30 for assets 10-14); the present holds real ones: assets 40-42 failed their last
    run, 43-44 produced zero rows, 45 stopped materializing three days ago (max lag 1 day)."""
    rng = random.Random(7)
    keys = [f"shop/a{i:02d}" for i in range(ASSETS_N)]
    specs: list[tuple[str, Event]] = []
    for i, key in enumerate(keys):
        upstream = [keys[i - 1]] if i % 5 else []
        downstream = [keys[i + 1]] if (i + 1) % 5 and i + 1 < ASSETS_N else []
        tags = {"ams/freshness_max_lag": "1d"} if i == 45 else {}
        spec = AssetSpecData(
            key=key,
            owners=[f"team:t{i % 4}"],
            group=f"g{i % 3}",
            upstream=upstream,
            downstream=downstream,
            tags=tags,
            code_location="shop",
        )
        specs.append(
            (
                ASSET_CHANGES,
                new_event(
                    AssetChanged,
                    "asset.registered",
                    identity=key,
                    data=AssetChangeData(spec=spec, version=1),
                    source="discovery",
                    occurred_at=_dt(end - DAYS * DAY),
                ),
            )
        )
    days: list[list[tuple[str, Event]]] = []
    start = end - (DAYS - 1) * DAY - ASSETS_N * 120
    for day in range(DAYS):
        events: list[tuple[str, Event]] = []
        for i, key in enumerate(keys):
            if i == 45 and day >= DAYS - 3:
                continue  # stopped three days before the end
            t0 = start + day * DAY + i * 120  # upstream finishes before its downstream starts
            took = rng.uniform(50, 70)
            t1 = t0 + took
            run_id = f"r{day:02d}-{i:02d}"
            failed = (day == 20 and i < 10) or (day == DAYS - 1 and 40 <= i <= 42)
            rows = int(rng.gauss(10_000, 150))
            if day == 30 and 10 <= i <= 14:
                rows //= 10
            if day == DAYS - 1 and i in (43, 44):
                rows = 0
            events.append((RUNS, _run(run_id, "STARTED", key, t0, None)))
            if failed:
                data = MaterializationFailedData(asset_key=key, run_id=run_id, error="ValueError: boom")
                events.append(
                    (
                        ASSETS,
                        new_event(
                            AssetMaterializationFailed,
                            "asset.materialization_failed",
                            identity=f"{run_id}:{key}",
                            data=data,
                            source="test",
                            occurred_at=_dt(t1),
                        ),
                    )
                )
                events.append((RUNS, _run(run_id, "FAILURE", key, t0, t1)))
            else:
                data_m = MaterializationData(
                    asset_key=key, run_id=run_id, row_count=rows, duration_s=took, storage_id=day * 1000 + i
                )
                events.append(
                    (
                        ASSETS,
                        new_event(
                            AssetMaterialized,
                            "asset.materialized",
                            identity=run_id,
                            data=data_m,
                            source="test",
                            occurred_at=_dt(t1 - 1),
                        ),
                    )
                )
                events.append((RUNS, _run(run_id, "SUCCESS", key, t0, t1)))
        days.append(events)
    return specs, days


def _run(run_id: str, status: str, key: str, start: float, end: float | None) -> RunEvent:
    data = RunData(
        run_id=run_id,
        job_name="daily",
        status=status,
        asset_keys=[key],  # type: ignore[arg-type]
        started_at=_dt(start),
        ended_at=_dt(end) if end else None,
        duration_s=(end - start) if end else None,
        error="ValueError: boom" if status == "FAILURE" else None,
        failed_asset_keys=[key] if status == "FAILURE" else None,
        code_location="shop",
    )
    kind = {"STARTED": "run.started", "SUCCESS": "run.succeeded", "FAILURE": "run.failed"}[status]
    return new_event(
        RunEvent, kind, identity=f"{run_id}:{status}", data=data, source="test", occurred_at=_dt(end or start)
    )


History = tuple[list[tuple[str, Event]], list[list[tuple[str, Event]]], set[tuple[str, str]]]


@pytest.fixture(scope="module")
def sixty_days(tmp_path_factory: pytest.TempPathFactory) -> History:
    """(specs, events per day, the reference's open alerts): computed once, the same for both arrivals (the
    last day ends two hours before; the reference's wall clock and the workers' differ by seconds)."""
    end = time.time() - 2 * 3600
    specs, days = history(end)
    home = tmp_path_factory.mktemp("catch_up") / "reference"
    expected = reference(home, specs, days, since=end - DAYS * DAY)
    # The history's own problems at its end, and nothing of the resolved past.
    failing_assets = {a for a, _ in expected}
    assert {"shop/a40", "shop/a41", "shop/a42", "shop/a43", "shop/a44", "shop/a45"} <= failing_assets
    assert not failing_assets & {f"shop/a{i:02d}" for i in range(15)}
    return specs, days, expected


@pytest.mark.parametrize("arrival", ["backlog", "paced"])
def test_sixty_days_of_history_page_no_one_about_the_past(
    tmp_path: Path,
    redis_url: str,
    bus_prefix: str,
    receiver: RecordingReceiver,
    arrival: str,
    sixty_days: History,
) -> None:
    """`backlog`: all of it waits in Redis for stopped workers (read 100 entries at a time, evaluated every
    0.2 s: a worker catching up sees the past in many steps). `paced`: the workers run and the history arrives
    a day at a time, as the publishing sensor's pages bring an instance's past on a first install."""
    specs, days, expected = sixty_days
    failing_assets = {a for a, _ in expected}

    home = tmp_path / "replay"
    home.mkdir()
    cfg = load_settings(HealthWorkerSettings, redis={"url": redis_url}, bus={"prefix": bus_prefix})
    bus = Bus(connect(cfg.redis), cfg.bus)

    def publish(events: list[tuple[str, Event]]) -> None:  # the sensor's order: stream by stream
        for stream in (ASSET_CHANGES, ASSETS, RUNS):
            if any(s == stream for s, _ in events):
                bus.publish_many(stream, [e for s, e in events if s == stream])

    if arrival == "backlog":
        publish(specs)
        for events in days:
            publish(events)
    env = catch_up_env(tmp_path, home, redis_url, bus_prefix, receiver)
    workers = [ServiceProcess.service(name, env, tmp_path / f"{name}.out") for name in ("health", "alerts")]
    try:
        for worker in workers:
            wait_for(worker.answers, timeout_s=60, what=f"{worker.args[-1]} answering")
        if arrival == "paced":
            publish(specs)
            for events in days:
                publish(events)
                # a sensor tick later; much shorter than the quiet period that ends a catch-up
                time.sleep(0.1)
        settle(home, expected, tmp_path / "workers.log")
    finally:
        for worker in workers:
            worker.stop()
    assert_nothing_about_the_past(receiver, home, failing_assets)
