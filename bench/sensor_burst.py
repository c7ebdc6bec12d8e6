"""Benchmark: a burst of N finished runs, then sensor ticks until every event is published.

    .venv/bin/python bench/sensor_burst.py [N] [--storage memory|sqlite] [--page-size 1000] [--redis-url URL]

The runs are recorded through the instance's APIs (orchestrator.testing.record_finished_runs: planned
materialization, run start, step start, materialization with row count and schema, run success/failure per
run) into a fresh instance: `memory` (the default) is Dagster's in-memory storage; `sqlite` is its default
local storage (run-sharded SQLite files, what `dagster dev` uses), closer to production reads but slow to
set up: Dagster creates one SQLite file per run (70-250 ms each here), minutes for the default 2000 runs.
Redis is a server of the benchmark's own unless --redis-url is given.
The last line is one JSON object: runs, ticks, events_per_s (events published / time spent in ticks), plus
details.

    .venv/bin/python bench/sensor_burst.py --tick-load 1000 [--rounds 12] [--runs-per-round 25] [--sensors 50]

compares two instances fed alike, round after round (Dagster's SQLite storage, one event-log file): each round
records `--runs-per-round` finished runs in both, and in the second also the sensor ticks the tick load
writes in one publishing interval (`--interval`, 5 s: 1000 ticks per minute -> 83 ticks over `--sensors`
sensors, written as the sensor daemon writes them, every 20th failing), then runs one publishing tick on each
(the order alternating). Asset and run events are published first in a tick, tick history after them; the
JSON compares, with / without the tick load, the time until a tick's asset and run events were published
(`ratio_asset_s`: what the tick load does to asset events), the whole tick's time (`ratio_tick_s`) and the
asset and run events published per second of tick time (`ratio_events_per_s`), and checks that every
sensor tick was published as `automation.tick`.
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
from libs.common.events import ASSETS, AUTOMATION, RUNS, parse_event
from libs.common.redis_server import LocalRedis
from libs.common.settings import load_settings
from orchestrator.sensors import EventPublisher, PublisherCursor, build_event_sensor, bus_for
from orchestrator.testing import add_sensor_states, record_finished_runs, record_sensor_ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=2000)
    parser.add_argument("--storage", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--max-ticks", type=int, default=1000)
    parser.add_argument(
        "--tick-load",
        type=int,
        default=None,
        metavar="TICKS_PER_MINUTE",
        help="compare publishing with and without this many sensor ticks per minute",
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--runs-per-round", type=int, default=25)
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--interval", type=float, default=5.0, help="the publishing sensor's interval (s)")
    args = parser.parse_args()
    if args.tick_load is not None:
        return compare_tick_load(args)
    if args.runs < 1:
        parser.error("runs must be at least 1")

    with ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="ams-bench-sensor-"))
        os.environ["DAGSTER_HOME"] = home
        url = args.redis_url
        if url is None:
            url = stack.enter_context(LocalRedis(directory=Path(home) / "redis")).url
        prefix = f"bench-{os.getpid()}"
        settings = load_settings(
            AppSettings,
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


def compare_tick_load(args: argparse.Namespace) -> int:
    """Asset-event publishing with and without a tick-history load; prints one JSON object."""
    per_round = round(args.tick_load * args.interval / 60)
    configs = ("without", "with")
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ams-bench-ticks-")))
        os.environ["DAGSTER_HOME"] = str(home)
        url = args.redis_url or stack.enter_context(LocalRedis(directory=home / "redis")).url
        client = redis.Redis.from_url(url, protocol=2)
        instances: dict[str, DagsterInstance] = {}
        prefixes: dict[str, str] = {}
        publishers: dict[str, EventPublisher] = {}
        for name in configs:
            (home / name).mkdir()
            # One event-log file (not one per run): recording the rounds' runs stays fast.
            storage = {
                "module": "dagster._core.storage.event_log",
                "class": "ConsolidatedSqliteEventLogStorage",
                "config": {"base_dir": str(home / name / "events")},
            }
            instances[name] = stack.enter_context(
                instance_for_test(temp_dir=str(home / name), overrides={"event_log_storage": storage})
            )
            settings = load_settings(
                AppSettings,
                redis={"url": url},
                bus={"prefix": f"bench-{os.getpid()}-{name}"},
                sensors={"page_size": args.page_size},
                logging={"file": None, "level": "WARNING"},
                dagster_home=str(home / name),
            )
            # What the sensor builds each tick, kept to read the tick's report (TickReport.asset_s).
            publishers[name] = EventPublisher(
                instances[name],
                bus_for(settings),
                code_location=settings.dagster.code_location,
                page_size=args.page_size,
                budget_s=settings.sensors.tick_budget_s,
                interval_s=args.interval,
                tick_history_instigators=settings.sensors.tick_history_instigators,
                tick_history_ticks=settings.sensors.tick_history_ticks,
            )
            prefixes[name] = settings.bus.prefix
        states = add_sensor_states(instances["with"], args.sensors, interval_s=max(1, round(args.interval)))
        cursors = {name: PublisherCursor() for name in configs}
        tick_s: dict[str, list[float]] = {name: [] for name in configs}
        asset_s: dict[str, list[float]] = {name: [] for name in configs}
        written = 0
        for i in range(args.rounds):
            for name in configs:
                record_finished_runs(instances[name], args.runs_per_round, failed_every=50)
            record_sensor_ticks(instances["with"], states, per_round, failed_every=20)
            written += per_round
            for name in configs if i % 2 == 0 else configs[::-1]:
                t0 = time.perf_counter()
                report = publishers[name].run_tick(cursors[name])
                tick_s[name].append(time.perf_counter() - t0)
                asset_s[name].append(report.asset_s)
                cursors[name] = PublisherCursor.from_json(report.cursor.to_json())
        result: dict[str, object] = {
            "mode": "tick_load",
            "ticks_per_minute": args.tick_load,
            "sensor_ticks_per_round": per_round,
            "sensors": args.sensors,
            "rounds": args.rounds,
            "runs_per_round": args.runs_per_round,
        }
        rates = {}
        for name in configs:
            prefix = prefixes[name]
            events = client.xlen(f"{prefix}:{RUNS}") + client.xlen(f"{prefix}:{ASSETS}")
            busy = sum(tick_s[name])
            rates[name] = events / busy
            result[name] = {
                "asset_and_run_events": events,
                "events_per_s": round(rates[name], 1),
                "asset_s_mean": round(sum(asset_s[name]) / len(asset_s[name]), 4),
                "tick_s_mean": round(busy / len(tick_s[name]), 4),
                "tick_s_max": round(max(tick_s[name]), 4),
            }
        stream = f"{prefixes['with']}:{AUTOMATION}"
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)  # type: ignore[assignment]
        published = sum(1 for _, fields in entries if parse_event(fields[b"event"]).type == "automation.tick")
        result["sensor_ticks_written"] = written
        result["sensor_ticks_published"] = published
        result["ratio_events_per_s"] = round(rates["with"] / rates["without"], 3)
        result["ratio_asset_s"] = round(sum(asset_s["with"]) / sum(asset_s["without"]), 3)
        result["ratio_tick_s"] = round(sum(tick_s["with"]) / sum(tick_s["without"]), 3)
        client.close()
    print(json.dumps(result))
    return 0 if published == written else 1


if __name__ == "__main__":
    sys.exit(main())
