"""Quiet catch-up on a first install: a Dagster instance already holds a month of runs when the publishing
sensor is turned on. Its ticks bring that past a page at a time to running discovery, health and alerts
workers; they page no one about the past, and leave open exactly the alerts a worker that had been running
all month would have, each announced once, with baselines learned from the month.

The reference is what the sensor published, read back from the streams and fed a day at a time to the
services in-process with a clock following the events (tests/faults/history.py), as in test_catch_up.py.

Paced a page per tick, the sensor reads each kind of record to its end before the next (every run start of
the month, then the materializations, then the run outcomes): the history arrives far from the order it
happened in, and a state judged halfway is superseded later. (With the default settings the month is one
tick, a page per kind; that case passed with catch-up disabled too, so it is not a test of catch-up.)
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import pytest
import redis
from dagster import (
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    Definitions,
    asset,
    build_sensor_context,
)

from libs.common.events import ASSET_CHANGES, ASSETS, CATALOG, RUNS, Event, parse_event
from libs.common.settings import load_settings
from libs.common.testing import ServiceProcess, wait_for
from orchestrator.sensors import PublisherCursor, build_event_sensor
from orchestrator.settings import OrchestratorSettings
from orchestrator.testing import Step, record_run
from services.alerts.testing import RecordingReceiver
from tests.faults.history import DAY, assert_nothing_about_the_past, catch_up_env, reference, settle

pytestmark = pytest.mark.faults
DAYS = 30
CHAINS = 3  # daily jobs of five assets each, every asset downstream of the one before it
STOPPED = "shop/a15"  # its own daily job; stopped three days before the end, expected daily
PAGE_SIZE = 25
TICK_S = 0.4  # between two ticks: well below the quiet period that ends a catch-up


def _key(i: int) -> str:
    return f"shop/a{i:02d}"


def _definition(i: int) -> AssetsDefinition:
    upstream = [AssetKey(_key(i - 1).split("/"))] if i < CHAINS * 5 and i % 5 else []
    tags = {"ams/freshness_max_lag": "1d"} if _key(i) == STOPPED else None

    @asset(
        key=AssetKey(_key(i).split("/")),
        deps=upstream,
        owners=[f"team:t{i % 4}"],
        group_name=f"g{i // 5}",
        tags=tags,
    )
    def _asset() -> None:
        """Never executed: the month of runs is recorded into the instance."""

    return _asset


DEFS = Definitions(assets=[_definition(i) for i in range(CHAINS * 5 + 1)])


def record_month(instance: DagsterInstance, end: float) -> dict[str, list[int]]:
    """Thirty days of daily runs, the last day's starting at `end`; returns each asset's row counts.

    The past holds problems that recovered: day 10 the chain a00-a04 failed at a01 (a02-a04 blocked),
    day 15 a07 produced a tenth of its rows, day 20 a15's run died. The present holds real ones: the chain
    a05-a09 failed at a06 on the last day (a07-a09 blocked), a12 produced zero rows, a15 stopped three
    days ago."""
    rng = random.Random(13)
    rows: dict[str, list[int]] = defaultdict(list)
    first = end - (DAYS - 1) * DAY
    for day in range(DAYS):
        base = first + day * DAY
        for chain in range(CHAINS):
            steps = []
            for i in range(chain * 5, chain * 5 + 5):
                count = int(rng.gauss(10_000, 150))
                count = count // 10 if (day, i) == (15, 7) else count
                count = 0 if (day, i) == (DAYS - 1, 12) else count
                failed = (day, i) in ((10, 1), (DAYS - 1, 6))
                steps.append(
                    Step(
                        _key(i),
                        rows=count,
                        seconds=rng.uniform(50, 70),
                        error="ValueError: boom" if failed else None,
                    )
                )
            for step in steps[: next((n + 1 for n, s in enumerate(steps) if s.error), len(steps))]:
                if step.error is None:
                    rows[step.asset].append(step.rows)
            record_run(instance, steps, job_name=f"daily_{chain}", start=base + chain * 900)
        if day < DAYS - 3:
            died = "process killed" if day == 20 else None
            step = Step(STOPPED, rows=int(rng.gauss(500, 10)), seconds=rng.uniform(20, 30))
            record_run(instance, [step], job_name="daily_a15", start=base + 2700, died=died)
            if died is None:
                rows[STOPPED].append(step.rows)
    return rows


def published(client: redis.Redis, prefix: str, stream: str) -> list[tuple[str, Event]]:
    return [(stream, parse_event(f[b"event"])) for _, f in client.xrange(f"{prefix}:{stream}")]


def by_day(events: list[tuple[str, Event]], first: float) -> list[list[tuple[str, Event]]]:
    """The history as a worker keeping up would have read it: a batch per day, in the order it happened."""
    days: list[list[tuple[str, Event]]] = [[] for _ in range(DAYS)]
    order = {ASSETS: 0, RUNS: 1}
    for stream, event in sorted(events, key=lambda se: (se[1].occurred_at, order[se[0]])):
        days[int((event.occurred_at.timestamp() - first) // DAY)].append((stream, event))
    assert all(days)
    return days


def test_a_month_in_the_instance_on_first_install_pages_no_one_about_the_past(
    tmp_path: Path, redis_url: str, bus_prefix: str, receiver: RecordingReceiver
) -> None:
    end = time.time() - 2 * 3600  # the last day's runs started two hours ago
    first = end - (DAYS - 1) * DAY
    cfg = load_settings(
        OrchestratorSettings,
        redis={"url": redis_url},
        bus={"prefix": bus_prefix},
        dagster={"code_location": "shop"},
        logging={"file": None},
        # One page per tick: 30 ticks for the month's 700 records.
        sensors={"page_size": PAGE_SIZE, "tick_budget_s": 0.001},
    )
    sensor = build_event_sensor(settings=cfg)
    home = tmp_path / "home"
    home.mkdir()
    env = catch_up_env(
        tmp_path,
        home,
        redis_url,
        bus_prefix,
        receiver,
        AMS_DAGSTER__CODE_LOCATION="shop",
        AMS_DISCOVERY__RESCAN_AT_START="false",
    )
    # Dagster's in-memory storage: its SQL run and event-log storage on one in-memory SQLite database (ids
    # committed in order, as on SQLite files), without the file per run that made recording the month most
    # of the test. DAGSTER_HOME stays unset: the reference's in-process stores are placed by their settings.
    with DagsterInstance.ephemeral() as instance:
        rows = record_month(instance, end)
        workers = [
            ServiceProcess.service(name, env, tmp_path / f"{name}.out")
            for name in ("health", "alerts", "discovery")
        ]
        try:
            for worker in workers:
                wait_for(worker.answers, timeout_s=60, what=f"{worker.args[-1]} answering")
            cursor: str | None = None
            repository = DEFS.get_repository_def()
            ticks, message = 0, ""
            while "caught up" not in message and ticks < 200:  # the daemon's ticks, from the sensor's first
                if ticks:
                    time.sleep(TICK_S)
                context = build_sensor_context(instance=instance, cursor=cursor, repository_def=repository)
                message = str(getattr(sensor(context), "skip_message", ""))
                cursor = context.cursor
                ticks += 1
            assert "caught up" in message
            client = redis.Redis.from_url(redis_url, protocol=2)
            history = [*published(client, bus_prefix, ASSETS), *published(client, bus_prefix, RUNS)]
            wait_for(
                lambda: len(published(client, bus_prefix, ASSET_CHANGES)) == CHAINS * 5 + 1,
                timeout_s=60,
                what="every asset registered by discovery",
            )
            specs = published(client, bus_prefix, ASSET_CHANGES)

            # What a worker that had been running all month would have open now.
            expected = reference(tmp_path / "reference", specs, by_day(history, first), since=first - DAY)
            failing_assets = {a for a, _ in expected}
            assert {"shop/a06", "shop/a12", STOPPED} <= failing_assets
            assert not failing_assets & {_key(i) for i in range(5)}  # the chain whose failure recovered
            settle(home, expected, tmp_path / "workers.log")
        finally:
            for worker in workers:
                worker.stop()

    # The sensor paced the month over its pages and published it with its own times.
    assert ticks > 20
    assert len(published(client, bus_prefix, CATALOG)) == 1
    assert PublisherCursor.from_json(cursor).positions["materialized"] > 0
    times = [e.occurred_at.timestamp() for _, e in history]
    assert abs(min(times) - first) < 0.001 and max(times) < time.time() - 3600  # the first run's start
    materialized = [e for _, e in history if e.type == "asset.materialized"]
    assert len(materialized) == sum(len(v) for v in rows.values())
    assert {e.data.asset_key for _, e in history if e.type == "asset.materialization_failed"} == {
        "shop/a01",
        "shop/a06",
        STOPPED,
    }

    assert_nothing_about_the_past(receiver, home, failing_assets)
    # Baselines learned from the month: the zero rows are judged against the asset's past runs.
    past = sorted(rows["shop/a12"][:-1])
    with sqlite3.connect(home / "monitor.db") as conn:
        (summary,) = conn.execute(
            "SELECT summary FROM alerts WHERE asset_key = 'shop/a12' "
            "AND status = 'firing' AND check_name = 'volume_anomaly'"
        ).fetchone()
    assert f"the last {DAYS - 1} runs had a median of {past[len(past) // 2]:,} rows" in summary, summary
