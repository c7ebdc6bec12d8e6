"""A store that cannot be written (disk full, read-only file): the worker stops acking, reports unready,
and resumes by itself once the fault is fixed — nothing lost, nothing doubled."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import RUNS, RunData, RunEvent, new_event
from libs.common.redis_server import free_port
from libs.common.settings import load_settings
from libs.common.testing import ServiceProcess, wait_for, worker_env

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "libs" / "common" / "sample_worker.py"


def run_event(n: int) -> RunEvent:
    return new_event(
        RunEvent,
        "run.succeeded",
        identity=f"run-{n}:SUCCESS",
        data=RunData(run_id=f"run-{n}", job_name="job", status="SUCCESS"),
        source="test",
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: filling it makes SQLite fail with 'database or disk is full'."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def start_sample(redis_url: str, prefix: str, db: Path, home: Path) -> ServiceProcess:
    port = free_port()
    env = worker_env(home, redis_url, prefix, SAMPLE_DB=str(db), SAMPLE_PORT=str(port), PYTHONPATH=str(ROOT))
    return ServiceProcess([sys.executable, str(SAMPLE)], env, port=port, log=home / "sample.out").start()


def count_rows(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    finally:
        conn.close()


def test_disk_full_stops_acking_then_resumes(
    redis_url: str, bus_prefix: str, small_disk: Path, tmp_path: Path
) -> None:
    db = small_disk / "sample.db"
    worker = start_sample(redis_url, bus_prefix, db, tmp_path)
    settings = load_settings(AppSettings, redis={"url": redis_url}, bus={"prefix": bus_prefix})
    bus = Bus(connect(settings.redis), settings.bus)
    try:
        wait_for(lambda: worker.ready(), what="ready")
        bus.publish_many(RUNS, [run_event(i) for i in range(20)])
        wait_for(lambda: count_rows(db) == 20, what="first rows")
        filler = small_disk / "filler"
        with filler.open("wb") as fh:  # take every free byte of the disk
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        bus.publish_many(RUNS, [run_event(i) for i in range(20, 2020)])
        wait_for(lambda: not worker.ready(), what="unready on a full disk")
        assert worker.process is not None and worker.process.poll() is None, worker.output()  # alive
        pending = bus.client.xpending(bus.key(RUNS), "sample")["pending"]
        assert pending > 0, "entries must stay unacknowledged while the store cannot commit"
        filler.unlink()
        wait_for(
            lambda: worker.ready(),
            90,
            what="ready after space is freed",
            diagnose=lambda: f"{worker.metrics()[-1500:]}\n{worker.output()}",
        )
        wait_for(lambda: count_rows(db) == 2020, what="every event stored once")
        wait_for(lambda: bus.client.xpending(bus.key(RUNS), "sample")["pending"] == 0, what="all acked")
        assert bus.client.xlen(bus.key(RUNS) + ":dlq") == 0
    finally:
        assert worker.stop() == 0


def test_read_only_store_file_stops_acking_then_resumes(
    redis_url: str, bus_prefix: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root (CI runs as root)")
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    db = store_dir / "sample.db"
    worker = start_sample(redis_url, bus_prefix, db, tmp_path)
    settings = load_settings(AppSettings, redis={"url": redis_url}, bus={"prefix": bus_prefix})
    bus = Bus(connect(settings.redis), settings.bus)
    locked: list[Path] = []
    try:
        wait_for(lambda: worker.ready(), what="ready")
        bus.publish_many(RUNS, [run_event(i) for i in range(5)])
        wait_for(lambda: count_rows(db) == 5, what="first rows")
        # Immutable database and WAL files: even root cannot write them. Not the -shm file: SQLite maps it
        # into memory, and a write to a mapped page of an immutable file is SIGBUS, a crash (about one run
        # in ten), not the write error this test is about.
        for path in (db, Path(f"{db}-wal")):
            if path.exists():
                subprocess.run(["chattr", "+i", str(path)], check=True)
                locked.append(path)
        bus.publish_many(RUNS, [run_event(i) for i in range(5, 500)])
        wait_for(lambda: not worker.ready(), what="unready on a read-only store")
        assert worker.process is not None and worker.process.poll() is None, worker.output()  # alive
        assert bus.client.xpending(bus.key(RUNS), "sample")["pending"] > 0
        for path in locked:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        locked.clear()
        wait_for(
            lambda: worker.ready(),
            90,
            what="ready after the file is writable again",
            diagnose=lambda: f"{worker.metrics()[-1500:]}\n{worker.output()}",
        )
        wait_for(lambda: count_rows(db) == 500, what="every event stored once")
        assert bus.client.xlen(bus.key(RUNS) + ":dlq") == 0
    finally:
        for path in locked:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        worker.stop()
