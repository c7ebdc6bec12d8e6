"""Alert latency: a failing materialization in a real `dagster dev` to the signed firing notice at a receiver.

    .venv/bin/python bench/alert_latency.py [--count 20] [--sensor-interval S] [--redis-url URL]
        [--timeout 600]

`asset-manager dev` runs on a fresh DAGSTER_HOME and free ports (Redis: the given URL, else the benchmark's
own embedded server): the webserver, the daemon (which ticks the publishing sensor at its configured
`sensors.minimum_interval_s`) and the three workers. One generic webhook receiver (Standard Webhooks
signature) listens on loopback. Each of `--count` cycles runs `raw_orders` on the dev instance with its
fail flag set (`orchestrator/assets/_demo.py`) after a random pause within the sensor's interval (failures
come at any moment of its period), takes the run's end time from Dagster's run storage, waits for
the first firing notice about `raw_orders` whose signature verifies, and records receipt - end; then a
successful run and its resolved notice close the cycle. The flap window is 0: each cycle is a new incident
announced at once, which is what is measured (with the default 300 s, every cycle after the first would be
held back on purpose). The last line is one JSON object: p50, p95, max, the sensor interval, count, and
whether p95 ≤ 10 s (Dagster's own run-failure sensors poll every 30 s by default), with the two legs apart:
run end to the sensor's XADD of run.failed (the stream entry id's time), and XADD to the notice's receipt.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.events import RUNS
from libs.common.redis_server import LocalRedis, free_port
from libs.common.testing import wait_for
from services.alerts.testing import Received, RecordingReceiver

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ASSET = "raw_orders"
SECRET = "whsec_" + "YWxlcnQtbGF0ZW5jeS1iZW5jaC1zZWNyZXQ="
TARGET_P95_S = 10.0
WORKERS = ("discovery", "health", "alerts")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def notice(received: Received, status: str) -> dict[str, Any] | None:
    """The verified payload of `received` when it is a `status` notice about ASSET, else None."""
    if not 200 <= received.status < 300:
        return None
    payload = RecordingReceiver.verify(received, SECRET)  # raises when the signature does not verify
    data = payload.get("data", {}) if isinstance(payload, dict) else {}
    return payload if data.get("status") == status and data.get("asset_key") == ASSET else None


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """`values` in os.environ (and the orchestrator's settings read afresh) until the end, then as before."""
    from orchestrator.settings import get_settings

    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


@contextmanager
def dev_system(
    home: Path, redis_url: str, receiver: RecordingReceiver, timeout_s: float, extra: dict[str, str]
) -> Iterator[int]:
    """`asset-manager dev` on `home` with the receiver configured; yields the webserver's port once the UI
    lists the assets and every worker is ready."""
    port = free_port()
    ports = {name: free_port() for name in WORKERS}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMS_", "DAGSTER_"))}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "AMS_REDIS__URL": redis_url,
            "AMS_LOGGING__FILE": "",
            "DEMO_SCHEDULE": "off",
            "AMS_ALERTS__FLAP_WINDOW_S": "0",
            "BENCH_WEBHOOK_SECRET": SECRET,
            "AMS_ALERTS__RECEIVERS": json.dumps(
                [
                    {
                        "name": "bench",
                        "kind": "webhook",
                        "url": receiver.url,
                        "secret_env": "BENCH_WEBHOOK_SECRET",
                    }
                ]
            ),
            **{f"AMS_SERVICES__{n.upper()}__PORT": str(p) for n, p in ports.items()},
            **extra,
        }
    )
    log = home.parent / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "asset-manager"), "dev", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"asset-manager dev exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            nodes = httpx.post(
                f"http://127.0.0.1:{port}/graphql", json={"query": "{ assetNodes { id } }"}, timeout=5
            ).json()["data"]["assetNodes"]
            return bool(nodes) and all(
                httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=2).status_code == 200
                for p in ports.values()
            )
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            return False

    try:
        wait_for(up, timeout_s, "asset-manager dev up", lambda: log.read_text()[-2000:])
        yield port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def sensor_ticks(instance: Any) -> tuple[list[float], list[float]]:
    """(gaps between the starts of successive ticks, durations) of the publishing sensor on `instance`."""
    from orchestrator.sensors import SENSOR_NAME

    starts: list[float] = []
    durations: list[float] = []
    for state in instance.all_instigator_state():
        if state.instigator_name == SENSOR_NAME:
            ticks = sorted(
                instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=10_000),
                key=lambda t: t.timestamp,
            )
            starts = [t.timestamp for t in ticks]
            durations = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]
    return [b - a for a, b in itertools.pairwise(starts)], durations


def measure(
    count: int,
    *,
    redis_url: str,
    workdir: Path,
    timeout_s: float = 600,
    notice_timeout_s: float = 120,
    bus_prefix: str | None = None,
    sensor_interval_s: int | None = None,
) -> dict[str, Any]:
    """Run the benchmark on a fresh DAGSTER_HOME under `workdir` (streams under `bus_prefix`, the sensor
    every `sensor_interval_s`; else as configured); returns the figures."""
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    extra = {"AMS_BUS__PREFIX": bus_prefix} if bus_prefix else {}
    if sensor_interval_s:
        extra["AMS_SENSORS__MINIMUM_INTERVAL_S"] = str(sensor_interval_s)
    # This process runs the materializations on the dev instance, with the same settings as the system.
    with (
        environment(DAGSTER_HOME=str(home), AMS_REDIS__URL=redis_url, DEMO_SCHEDULE="off", **extra),
        RecordingReceiver() as receiver,
        dev_system(home, redis_url, receiver, timeout_s, extra),
    ):
        from dagster import AssetKey, DagsterInstance

        from orchestrator.assets._demo import set_failing
        from orchestrator.definitions import defs
        from orchestrator.settings import get_settings

        settings = get_settings()
        interval = settings.sensors.minimum_interval_s
        job = defs.resolve_implicit_global_asset_job_def()
        latencies: list[float] = []
        published: list[float] = []  # run end -> the sensor's XADD of run.failed (the entry id's time)
        client = redis.Redis.from_url(redis_url)

        def xadd_time(run_id: str) -> float | None:
            entries: Any = client.xrevrange(f"{settings.bus.prefix}:{RUNS}", count=200)
            for entry_id, fields in entries:
                event = json.loads(fields[b"event"])
                if event.get("type") == "run.failed" and event.get("data", {}).get("run_id") == run_id:
                    return int(entry_id.split(b"-")[0]) / 1000
            return None

        with DagsterInstance.get() as instance:

            def run(failing: bool) -> tuple[str, float]:
                set_failing(ASSET, failing)
                result = job.execute_in_process(
                    instance=instance, asset_selection=[AssetKey(ASSET)], raise_on_error=False
                )
                assert result.success is not failing, f"{ASSET} run: success={result.success}"
                record = instance.get_run_record_by_id(result.run_id)
                assert record is not None and record.end_time is not None, "run without an end time"
                return result.run_id, float(record.end_time)

            def await_notice(after: int, status: str) -> Received:
                found: list[Received] = []

                def arrived(requests: list[Received]) -> bool:
                    found[:] = [r for r in requests[after:] if notice(r, status)]
                    return bool(found)

                receiver.wait_for(arrived, notice_timeout_s)
                return found[0]

            run(False)  # the first run: the catalog and a healthy history
            jitter = random.Random(count)
            for i in range(count):
                # Failures come at any moment of the sensor's period: without a random pause, each cycle
                # (run, notice, run, notice) lasting about as long as the last would lock onto the ticks.
                time.sleep(jitter.uniform(0, interval))
                seen = len(receiver.requests)
                run_id, ended = run(True)
                firing = await_notice(seen, "firing")
                latencies.append(firing.at - ended)
                xadd = xadd_time(run_id)
                published.append((xadd if xadd is not None else math.nan) - ended)
                print(
                    f"cycle {i + 1}/{count}: {latencies[-1]:.2f} s (sensor published after "
                    f"{published[-1]:.2f} s)",
                    file=sys.stderr,
                )
                seen = len(receiver.requests)
                run(False)
                await_notice(seen, "resolved")
            ticks = sensor_ticks(instance)
        client.close()
    p95 = percentile(latencies, 95)
    after = [total - pub for total, pub in zip(latencies, published, strict=True) if not math.isnan(pub)]
    return {
        "count": len(latencies),
        "p50_s": round(percentile(latencies, 50), 2),
        "p95_s": round(p95, 2),
        "max_s": round(max(latencies), 2),
        "min_s": round(min(latencies), 2),
        "sensor_interval_s": interval,
        "target_p95_s": TARGET_P95_S,
        "target_met": p95 <= TARGET_P95_S,
        "dagster_run_failure_sensor_default_interval_s": 30,
        # the two legs: run end -> the sensor's XADD, and XADD -> verified notice received (workers, delivery)
        "sensor_p50_s": round(percentile([x for x in published if not math.isnan(x)] or [math.nan], 50), 2),
        "sensor_max_s": round(max([x for x in published if not math.isnan(x)], default=math.nan), 2),
        "workers_p50_s": round(percentile(after or [math.nan], 50), 3),
        "workers_max_s": round(max(after, default=math.nan), 3),
        # the daemon's ticks of the publishing sensor meanwhile: time between starts, and each one's duration
        "tick_gap_p50_s": round(percentile(ticks[0] or [math.nan], 50), 2),
        "tick_gap_max_s": round(max(ticks[0], default=math.nan), 2),
        "tick_duration_p50_s": round(percentile(ticks[1] or [math.nan], 50), 2),
        "each_s": [round(x, 2) for x in latencies],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20, help="failing materializations (default 20)")
    parser.add_argument("--redis-url")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the dev system to come up")
    parser.add_argument(
        "--sensor-interval", type=int, help="the sensor's minimum_interval_s (default: configured)"
    )
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    server = None if args.redis_url else LocalRedis(port=free_port()).start()
    redis_url = args.redis_url or server.url  # type: ignore[union-attr]
    try:
        with tempfile.TemporaryDirectory(prefix="alert-latency-") as tmp:
            figures = measure(
                args.count,
                redis_url=redis_url,
                workdir=Path(tmp),
                timeout_s=args.timeout,
                sensor_interval_s=args.sensor_interval,
            )
    finally:
        if server:
            server.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
