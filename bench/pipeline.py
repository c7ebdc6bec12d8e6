"""Pipeline benchmark: the health and alerts workers as processes on a Redis of their own.

1. floor: raw XREADGROUP COUNT 1000 + JSON + SQLite executemany + XACK of the same kind of events
   (bench/floor.py)
2. throughput: N events from `asset-manager simulate` published while a fresh health worker is paused
   (SIGSTOP), then the time from SIGCONT until it has acknowledged them all: a backlog consumed as the
   floor consumes its own. Floor and worker runs alternate (`--repeat` each); medians and their ratio are
   reported. `live_throughput_eps`: N more published while the main health worker runs
3. latency: under a background load of `--rate` events/s (simulate), a failing materialization of a fresh
   probe asset is XADDed now and then; the time until its signed firing webhook is received
4. rss_mb: resident memory of each worker at the end

`--throughput-only` runs 1 and 2 alone (no live throughput, no latency phase): for A/B runs of the ratio.

Prints one JSON object on its last line:
`{"throughput_eps", "floor_eps", "ratio", "p50_ms", "p99_ms", "rss_mb": {...}, ...}`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from floor import measure_floor  # noqa: E402

from asset_manager.commands.simulate import generate, simulate  # noqa: E402
from asset_manager.settings import AppSettings  # noqa: E402
from libs.common.bus import Bus, connect  # noqa: E402
from libs.common.events import (  # noqa: E402
    ASSETS,
    RUNS,
    AssetMaterializationFailed,
    Event,
    MaterializationFailedData,
    RunData,
    RunEvent,
    new_event,
)
from libs.common.redis_server import LocalRedis  # noqa: E402
from libs.common.settings import load_settings  # noqa: E402
from libs.common.testing import ServiceProcess, wait_for  # noqa: E402
from services.alerts.testing import Received, RecordingReceiver  # noqa: E402

SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1vbmx5LWZvci1iZW5jaA=="


def start_worker(name: str, env: dict[str, str], log: Path, profile: Path | None) -> ServiceProcess:
    worker = ServiceProcess.service(name, env, log)
    # Collapsed stacks of the running worker, for flame graphs or a top-functions list.
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        assert worker.process is not None
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--format",
                "raw",
                "--rate",
                "200",
                "-o",
                str(profile / f"{name}.txt"),
                "--pid",
                str(worker.process.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return worker


def probe_events(n: int) -> list[tuple[str, Event]]:
    asset = f"probe/asset_{n}"
    run_id = f"probe-run-{n}"
    return [
        (
            ASSETS,
            new_event(
                AssetMaterializationFailed,
                "asset.materialization_failed",
                identity=f"{run_id}:{asset}",
                source="bench",
                data=MaterializationFailedData(asset_key=asset, run_id=run_id, error="probe failure"),
            ),
        ),
        (
            RUNS,
            new_event(
                RunEvent,
                "run.failed",
                identity=f"{run_id}:FAILURE",
                source="bench",
                data=RunData(
                    run_id=run_id,
                    job_name="probe",
                    status="FAILURE",
                    asset_keys=[asset],
                    error="probe failure",
                ),
            ),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # 100k: the size of the run the fault tests kill workers in; the store and the floor's table grow to it.
    parser.add_argument("--events", type=int, default=100_000, help="events per throughput run")
    parser.add_argument("--rate", type=float, default=1000.0, help="background events/s in the latency phase")
    parser.add_argument("--probes", type=int, default=100, help="failing materializations timed end to end")
    parser.add_argument("--assets", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="floor and backlog runs (medians are reported)")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds of background load before the probes"
    )
    parser.add_argument("--profile", type=Path, default=None, help="record each worker with py-spy into DIR")
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="floor and backlog runs only (no live throughput, no latency phase): for A/B runs of the ratio",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ams-bench-"))
    server = LocalRedis(directory=work / "redis").start()
    receiver = RecordingReceiver().start()
    prefix = "bench"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMS_")},
        "DAGSTER_HOME": str(work / "home"),
        "ENVIRONMENT": "production",
        "AMS_REDIS__URL": server.url,
        "AMS_BUS__PREFIX": prefix,
        "AMS_LOGGING__FILE": str(work / "system.log"),
        "AMS_LOGGING__LEVEL": "WARNING",
        # The pipeline's own latency: without the deliberate waits that gather an alert's and an incident's
        # members into one notice (defaults 0 s and 2 s; bench/alert_latency.py measures with the defaults).
        "AMS_ALERTS__GROUP_WAIT_S": "0",
        "AMS_ALERTS__INCIDENT_WAIT_S": "0",
        "AMS_ALERTS__RECEIVERS": json.dumps(
            [{"name": "bench", "url": receiver.url, "secret_env": "BENCH_WHSEC"}]
        ),
        "AMS_ALERTS__DEFAULT_RECEIVERS": json.dumps(["bench"]),
        "BENCH_WHSEC": SECRET,
    }
    workers = {
        name: start_worker(name, env, work / f"{name}.out", args.profile) for name in ("health", "alerts")
    }
    result: dict[str, object] = {"events": args.events}
    try:
        wait_for(lambda: all(w.answers() and w.ready() for w in workers.values()), 60, "workers ready")
        client = redis.Redis.from_url(server.url, protocol=2)
        settings = load_settings(
            AppSettings, redis={"url": server.url}, bus={"prefix": prefix}, logging={"file": None}
        )
        bus = Bus(connect(settings.redis), settings.bus)

        # 1+2. The floor and the health worker's throughput over a backlog, measured alike and interleaved
        #    (floor, worker, floor, worker, ...) so that a slow moment of a shared machine hits both: each
        #    worker run is a fresh health process with a store and streams of its own, paused (SIGSTOP) while
        #    the events are published and timed from SIGCONT until it has acknowledged them all. The ratio is
        #    the median worker run over the median floor run.
        def publish(target: Bus, assets_prefix: str) -> None:
            by_stream: dict[str, list[Event]] = {}
            for stream, event in generate(
                assets=args.assets, events=args.events, seed=1, inject_rate=0.02, prefix=assets_prefix
            ):
                by_stream.setdefault(stream, []).append(event)
            for stream, items in by_stream.items():
                for i in range(0, len(items), 1000):
                    target.publish_many(stream, items[i : i + 1000])

        def settled(target: Bus) -> None:
            while target.unsettled("health", [RUNS, ASSETS]) != 0:
                time.sleep(0.005)

        def backlog_throughput(run: int) -> float:
            run_prefix = f"{prefix}-backlog{run}"
            run_env = {**env, "DAGSTER_HOME": str(work / f"backlog{run}"), "AMS_BUS__PREFIX": run_prefix}
            profile = args.profile / f"backlog{run}" if args.profile else None
            worker = start_worker("health", run_env, work / f"health-backlog{run}.out", profile)
            target = Bus(connect(settings.redis), settings.bus.model_copy(update={"prefix": run_prefix}))
            try:
                wait_for(
                    lambda: (
                        worker.answers()
                        and worker.ready()
                        and target.unsettled("health", [RUNS, ASSETS]) == 0
                    ),
                    60,
                    "backlog worker ready",
                )
                assert worker.process is not None
                worker.process.send_signal(signal.SIGSTOP)
                try:
                    publish(target, "sim")
                finally:
                    worker.process.send_signal(signal.SIGCONT)
                started = time.perf_counter()
                settled(target)
                return float(args.events) / (time.perf_counter() - started)
            finally:
                worker.stop()
                target.client.close()

        floor_runs: list[float] = []
        backlog_runs: list[float] = []
        for run in range(args.repeat):
            floor_runs.append(measure_floor(client, args.events))
            backlog_runs.append(backlog_throughput(run))
        floor = statistics.median(floor_runs)
        throughput = statistics.median(backlog_runs)
        result.update(
            {
                "throughput_eps": round(throughput, 1),
                "floor_eps": round(floor, 1),
                "floor_runs_eps": [round(f, 1) for f in floor_runs],
                "throughput_runs_eps": [round(t, 1) for t in backlog_runs],
                "ratio": round(throughput / floor, 3),
            }
        )

        if not args.throughput_only:
            # The same number published while the main health worker runs (publisher, Redis and worker share
            # the cores): what a burst costs when nobody waits for it to be queued first.
            started = time.perf_counter()
            publish(bus, "live")
            settled(bus)
            live_throughput = args.events / (time.perf_counter() - started)

            # 3. end-to-end latency under background load
            stop = threading.Event()

            def background() -> None:
                seed = 100
                while not stop.is_set():
                    simulate(
                        bus,
                        assets=args.assets,
                        events=int(args.rate * 2),
                        rate=args.rate,
                        seed=seed,
                        inject=(),
                        prefix=f"bg{seed}",
                    )
                    seed += 1

            loader = threading.Thread(target=background, daemon=True)
            loader.start()
            time.sleep(args.settle)  # let the load settle
            sent: dict[str, float] = {}
            arrived: dict[str, float] = {}

            def record_arrival(request: Received) -> None:
                arrived.setdefault(json.loads(request.body).get("data", {}).get("asset_key", ""), time.time())

            receiver.on_request = record_arrival
            for n in range(args.probes):
                events = probe_events(n)
                sent[f"probe/asset_{n}"] = time.time()
                for stream, event in events:
                    bus.publish_many(stream, [event])
                time.sleep(0.1)
            deadline = time.monotonic() + 60
            while any(k not in arrived for k in sent) and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            loader.join(30)
            latencies = sorted((arrived[k] - sent[k]) * 1000 for k in sent if k in arrived)
            missing = len(sent) - len(latencies)

            def pct(q: float) -> float:
                return (
                    round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)
                    if latencies
                    else -1.0
                )

            result.update(
                {
                    "live_throughput_eps": round(live_throughput, 1),
                    "p50_ms": pct(0.5),
                    "p99_ms": pct(0.99),
                    "latency_mean_ms": round(statistics.fmean(latencies), 1) if latencies else -1.0,
                    "latency_max_ms": round(latencies[-1], 1) if latencies else -1.0,
                    "probes": args.probes,
                    "probes_missing": missing,
                    "background_eps": args.rate,
                }
            )
        rss = {
            name: round(psutil.Process(w.process.pid).memory_info().rss / 2**20, 1)  # type: ignore[union-attr]
            for name, w in workers.items()
        }
        result["rss_mb"] = rss
    finally:
        for worker in workers.values():
            worker.stop()
        receiver.stop()
        server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
