"""Benchmark: a burst of N finished runs, then sensor ticks until every event is published.

    .venv/bin/python bench/sensor_burst.py [N] [--storage memory|sqlite] [--page-size 1000] [--redis-url URL]

The runs are recorded through the instance's APIs (orchestrator.testing.record_finished_runs: planned
materialization, run start, step start, materialization with row count and schema, run success/failure per
run) into a fresh instance: `memory` (the default) is Dagster's in-memory storage; `sqlite` is its default
local storage (run-sharded SQLite files, what `dagster dev` uses), closer to production reads but slow to
set up: Dagster creates one SQLite file per run (70-250 ms each here), minutes for the default 2000 runs. Redis is a server of the benchmark's own unless --redis-url is given.
The last line is one JSON object: runs, ticks, events_per_s (events published / time spent in ticks), plus
details.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from dagster import DagsterInstance, build_sensor_context, instance_for_test

from asset_manager.settings import AppSettings
from libs.common.events import ASSETS, RUNS
from libs.common.redis_server import LocalRedis
from libs.common.settings import load_settings
from orchestrator.sensors import PublisherCursor, build_event_sensor
from orchestrator.testing import record_finished_runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=2000)
    parser.add_argument("--storage", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--max-ticks", type=int, default=1000)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("runs must be at least 1")

    with ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="ams-bench-sensor-"))
        os.environ["DAGSTER_HOME"] = home
        url = args.redis_url
        if url is None:
            url = stack.enter_context(LocalRedis(directory=Path(home) / "redis")).url
        prefix = f"bench-{os.getpid()}"
        settings = load_settings(AppSettings,
            redis={"url": url},
            bus={"prefix": prefix},
            sensors={"page_size": args.page_size},
            logging={"file": None, "level": "WARNING"},
            dagster_home=home,
        )
        if args.storage == "memory":
            instance = DagsterInstance.ephemeral()
        else:
            instance = stack.enter_context(instance_for_test(temp_dir=home))
        client = redis.Redis.from_url(url, protocol=2)

        started = time.perf_counter()
        failed_every = 50
        record_finished_runs(instance, args.runs, failed_every=failed_every)
        setup_s = time.perf_counter() - started
        print(f"recorded {args.runs} finished runs ({args.storage}) in {setup_s:.1f} s", file=sys.stderr)

        sensor = build_event_sensor(settings=settings)
        expected_runs = 2 * args.runs  # started + succeeded/failed
        cursor: str | None = None
        ticks = 0
        tick_seconds: list[float] = []
        published = 0
        while ticks < args.max_ticks:
            context = build_sensor_context(instance=instance, cursor=cursor)
            t0 = time.perf_counter()
            sensor(context)
            tick_seconds.append(time.perf_counter() - t0)
            ticks += 1
            cursor = context.cursor
            published = client.xlen(f"{prefix}:{RUNS}") + client.xlen(f"{prefix}:{ASSETS}")
            if client.xlen(f"{prefix}:{RUNS}") >= expected_runs:
                break
        run_events = client.xlen(f"{prefix}:{RUNS}")
        busy = sum(tick_seconds)
        result = {
            "runs": args.runs,
            "ticks": ticks,
            "events_per_s": round(published / busy, 1) if busy else None,
            "events": published,
            "run_events": run_events,
            "all_published": run_events >= expected_runs,
            "tick_s": [round(s, 3) for s in tick_seconds],
            "page_size": args.page_size,
            "storage": args.storage,
            "setup_s": round(setup_s, 1),
            "cursor": json.loads(cursor or "{}").get("positions") if cursor else None,
        }
        assert PublisherCursor.from_json(cursor)  # the cursor stays readable
        client.close()
    print(json.dumps(result))
    return 0 if result["all_published"] else 1


if __name__ == "__main__":
    sys.exit(main())
