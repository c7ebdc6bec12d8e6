"""The worker runtime as a real process: service surface, graceful stop, Redis restarts survived."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.bus import Bus, connect
from libs.common.events import RUNS, RunData, RunEvent, new_event
from libs.common.redis_server import LocalRedis, free_port
from libs.common.settings import Settings, load_settings
from libs.common.testing import ServiceProcess, wait_for

SAMPLE = Path(__file__).with_name("sample_worker.py")
ROOT = Path(__file__).resolve().parents[3]


def run_event(n: int) -> RunEvent:
    return new_event(
        RunEvent,
        "run.succeeded",
        identity=f"run-{n}:SUCCESS",
        data=RunData(run_id=f"run-{n}", job_name="job", status="SUCCESS"),
        source="test",
    )


class SampleWorker(ServiceProcess):
    """tests/libs/common/sample_worker.py: a minimal service on the real worker runtime."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        db: Path,
        home: Path,
        *,
        delay_s: float = 0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AMS_")},
            "AMS_REDIS__URL": redis_url,
            "AMS_BUS__PREFIX": prefix,
            "AMS_BUS__BLOCK_MS": "200",
            "AMS_BUS__CLAIM_IDLE_MS": "500",
            "AMS_BUS__CLAIM_INTERVAL_S": "0.5",
            "DAGSTER_HOME": str(home),
            "SAMPLE_DB": str(db),
            "SAMPLE_PORT": str(port),
            "SAMPLE_DELAY_S": str(delay_s),
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        log = home / f"sample-{prefix}-{port}.out"
        super().__init__([sys.executable, str(SAMPLE)], env, port=port, log=log)
        self.db = db
        self.start()

    def rows(self) -> int:
        if not self.db.exists():
            return 0
        conn = sqlite3.connect(self.db, timeout=5)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            conn.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(directory=tmp_path / "redis").start()
    yield server
    server.stop()


def bus_for(url: str, prefix: str) -> Bus:
    settings: Settings = load_settings(Settings, redis={"url": url}, bus={"prefix": prefix})
    return Bus(connect(settings.redis), settings.bus)


def test_surface_and_graceful_stop(own_redis: LocalRedis, tmp_path: Path) -> None:
    worker = SampleWorker(own_redis.url, "w1", tmp_path / "sample.db", tmp_path)
    try:
        wait_for(worker.answers, what="worker /healthz")
        bus = bus_for(own_redis.url, "w1")
        bus.publish_many(RUNS, [run_event(i) for i in range(50)])
        wait_for(lambda: worker.rows() == 50, what="50 rows")
        metrics = worker.metrics()
        assert 'ams_events_consumed_total{group="sample",stream="runs"} 50.0' in metrics
        assert (
            'ams_worker_ready{service="sample"} 1.0' in metrics
        )  # healthy since start, not only after recovery
        ready = worker.get("/readyz")
        assert ready is not None
        assert ready.status_code == 200 and ready.json()["checks"] == {
            "redis": "ok",
            "store": "ok",
            "worker": "ok",
        }
    finally:
        assert worker.stop() == 0
    assert "worker_stopped" in worker.output()


def test_sigterm_mid_batch_finishes_and_acks(own_redis: LocalRedis, tmp_path: Path) -> None:
    worker = SampleWorker(own_redis.url, "w2", tmp_path / "sample.db", tmp_path, delay_s=1.0)
    try:
        wait_for(worker.answers, what="worker /healthz")
        bus = bus_for(own_redis.url, "w2")
        bus.publish_many(RUNS, [run_event(i) for i in range(10)])
        wait_for(lambda: worker.rows() == 10, what="batch committed")
    finally:
        assert worker.stop() == 0  # stop arrives during the 1 s batch: it completes and acks
    assert bus.client.xpending(bus.key(RUNS), "sample")["pending"] == 0


def test_redis_restart_without_persistence_is_survived(own_redis: LocalRedis, tmp_path: Path) -> None:
    worker = SampleWorker(own_redis.url, "w3", tmp_path / "sample.db", tmp_path)
    try:
        wait_for(worker.answers, what="worker /healthz")
        bus_for(own_redis.url, "w3").publish_many(RUNS, [run_event(i) for i in range(5)])
        wait_for(lambda: worker.rows() == 5, what="first rows")
        own_redis.restart()  # no AOF: streams and groups are gone
        wait_for(lambda: worker.ready(), what="ready again")
        bus_for(own_redis.url, "w3").publish_many(RUNS, [run_event(i) for i in range(5, 12)])
        wait_for(lambda: worker.rows() == 12, what="rows after restart")
    finally:
        assert worker.stop() == 0


def test_redis_down_makes_worker_unready_then_recovers_with_aof(tmp_path: Path) -> None:
    server = LocalRedis(directory=tmp_path / "redis", appendonly=True).start()
    worker = SampleWorker(server.url, "w4", tmp_path / "sample.db", tmp_path)
    try:
        wait_for(worker.answers, what="worker /healthz")
        bus = bus_for(server.url, "w4")
        bus.publish_many(RUNS, [run_event(i) for i in range(5)])
        server.stop(kill=True)
        wait_for(lambda: not worker.ready(), what="unready while Redis is down")
        # /readyz pings Redis itself; the loop marks the gauge when its own next read fails.
        wait_for(lambda: 'ams_worker_ready{service="sample"} 0.0' in worker.metrics(), what="ready gauge 0")
        server.start()
        bus = bus_for(server.url, "w4")
        bus.publish_many(RUNS, [run_event(i) for i in range(5, 10)])
        wait_for(lambda: worker.rows() == 10, what="all rows, none lost")
        wait_for(lambda: worker.ready(), what="ready again")
    finally:
        assert worker.stop() == 0
        server.stop()


def test_a_second_consumer_of_a_sqlite_store_is_refused(own_redis: LocalRedis, tmp_path: Path) -> None:
    """`--scale sample=2` (same volume) or a second StatefulSet replica (a volume of its own): a SQLite store
    takes one consumer. The second waits one lease TTL (the holder might have crashed), then exits 1."""
    lease = {"SAMPLE_LEASE_TTL_S": "2"}
    first = SampleWorker(
        own_redis.url,
        "w5",
        tmp_path / "one.db",
        tmp_path,
        extra_env={**lease, "AMS_BUS__CONSUMER_NAME": "sample-a"},
    )
    try:
        wait_for(first.ready, what="first consumer ready")
        second = SampleWorker(
            own_redis.url,
            "w5",
            tmp_path / "two.db",
            tmp_path,
            extra_env={**lease, "AMS_BUS__CONSUMER_NAME": "sample-b"},
        )
        assert second.process is not None
        assert second.process.wait(timeout=60) == 1
        assert "worker_refused" in second.output() and "sample-a" in second.output()
        bus_for(own_redis.url, "w5").publish_many(RUNS, [run_event(i) for i in range(3)])
        wait_for(lambda: first.rows() == 3, what="the first consumer keeps working")
    finally:
        assert first.stop() == 0
    # stopped cleanly, it released the lease: a successor starts at once
    successor = SampleWorker(
        own_redis.url,
        "w5",
        tmp_path / "one.db",
        tmp_path,
        extra_env={**lease, "AMS_BUS__CONSUMER_NAME": "sample-c"},
    )
    try:
        wait_for(successor.ready, what="successor ready")
    finally:
        assert successor.stop() == 0


def test_an_intended_job_skip_is_not_logged_as_a_warning() -> None:
    import logging

    from libs.common.worker import _install_quiet_skips

    _install_quiet_skips()
    logger = logging.getLogger("apscheduler.scheduler")
    skip = logger.makeRecord(
        logger.name,
        logging.WARNING,
        __file__,
        1,
        'Execution of job "x" skipped: maximum number of running instances reached (1)',
        (),
        None,
    )
    other = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "Job x raised an exception", (), None
    )
    assert not logger.filter(skip)
    assert logger.filter(other)
