"""Backup and restore while the three workers run under load: nothing acknowledged is lost.

A backup into the live store directory is refused (it used to rename its copy over the open databases, and
every event acknowledged afterwards was gone); backups taken mid-stream are consistent copies; a restore
while the workers run is refused without touching a store. Once the workers are stopped, the restore puts
the backup's content in place and a worker starts on it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_manager.cli import main
from asset_manager.commands.simulate import generate
from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import (
    ASSET_CHANGES,
    ASSETS,
    CATALOG,
    HEALTH,
    RUNS,
    AssetSpecData,
    CatalogSnapshot,
    CatalogSnapshotData,
    Event,
    new_event,
)
from libs.common.redis_server import LocalRedis
from libs.common.settings import load_settings
from libs.common.store import stored_event_id
from libs.common.testing import ServiceProcess, wait_for, worker_env

pytestmark = pytest.mark.faults
EVENTS = int(os.environ.get("AMS_FAULT_BACKUP_EVENTS", "3000"))


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def processed(db: Path) -> set[str]:
    ids = rows(db, "SELECT event_id FROM processed_events")
    return {stored_event_id(r[0]) for r in ids}  # type: ignore[arg-type]


def snapshot(n: int) -> CatalogSnapshot:
    """The catalog of a code location whose description changes at each snapshot: discovery registers
    changes and publishes them to health and alerts."""
    assets = [
        AssetSpecData(key=f"load/a{i}", description=f"version {n}", owners=["team:data"]) for i in range(20)
    ]
    return new_event(
        CatalogSnapshot,
        "catalog.snapshot",
        identity=f"load:{n}",
        source="test",
        data=CatalogSnapshotData(code_location="load", fingerprint=f"f{n}", assets=assets),
    )


@pytest.fixture
def system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Bus, dict[str, ServiceProcess]]]:
    server = LocalRedis(directory=tmp_path / "redis").start()
    env = worker_env(
        tmp_path / "home",
        server.url,
        "bk",
        AMS_LOGGING__FILE="",
        AMS_DISCOVERY__RESCAN_AT_START="false",
        AMS_DAGSTER__CODE_LOCATION="load",
    )
    workers = {
        name: ServiceProcess.service(name, env, tmp_path / f"{name}.out")
        for name in ("discovery", "health", "alerts")
    }
    # The CLI in this process sees the same system (settings from the environment, the workers' ports).
    for name, value in env.items():
        if name.startswith(("AMS_", "DAGSTER_HOME")):
            monkeypatch.setenv(name, value)
    for name, worker in workers.items():
        monkeypatch.setenv(f"AMS_SERVICES__{name.upper()}__PORT", str(worker.port))
    settings = load_settings(
        AppSettings, redis={"url": server.url}, bus={"prefix": "bk"}, logging={"file": None}
    )
    bus = Bus(connect(settings.redis), settings.bus)
    try:
        yield bus, workers
    finally:
        for worker in workers.values():
            if worker.process and worker.process.poll() is None:
                worker.kill()
        bus.client.close()
        server.stop()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def test_backup_and_restore_under_load_lose_nothing_acknowledged(
    system: tuple[Bus, dict[str, ServiceProcess]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bus, workers = system
    home = tmp_path / "home"
    wait_for(lambda: all(w.answers() for w in workers.values()), 90, "workers up")
    published: list[tuple[str, Event]] = list(
        generate(assets=30, events=EVENTS, seed=3, inject=("failure", "volume"), inject_rate=0.1, history=0.3)
    )
    snapshots = [snapshot(n) for n in range(20)]
    done = threading.Event()

    def publish() -> None:  # about 6 s of steady load on every worker
        starts = range(0, len(published), 100)
        for n, i in enumerate(starts):
            chunk = published[i : i + 100]
            for stream in (ASSETS, RUNS):
                bus.publish_many(stream, [e for s, e in chunk if s == stream])
            if n < len(snapshots):
                bus.publish_many(CATALOG, [snapshots[n]])
            time.sleep(6.0 / len(starts))  # pacing, so backups are taken mid-stream
        bus.publish_many(CATALOG, snapshots[len(starts) :])  # the snapshots left when chunks ran out
        done.set()

    producer = threading.Thread(target=publish, daemon=True)
    producer.start()
    backups: list[Path] = []
    refused: list[str] = []
    while not done.is_set():
        # The live store directory, named as operators do: refused, nothing touched.
        for dest in (str(home), str(home / "." / ""), f"{home}/../home"):
            code, err = cli(capsys, "backup", "--dest", dest)
            assert code == 2 and "live store directory" in err, err
        # A consistent copy while every worker writes.
        dest = tmp_path / f"backup-{len(backups)}"
        code, err = cli(capsys, "backup", "--dest", str(dest))
        assert code == 0, err
        backups.append(dest)
        # A restore while the workers run: refused before anything is replaced.
        code, err = cli(capsys, "restore", "--from", str(dest))
        assert code == 1 and "refusing to restore while workers run" in err, err
        refused.append(err)
        time.sleep(0.5)
    producer.join(30)

    wait_for(lambda: bus.unsettled("discovery", [CATALOG]) == 0, 120, "discovery caught up")
    wait_for(lambda: bus.unsettled("health", [RUNS, ASSETS, ASSET_CHANGES]) == 0, 120, "health caught up")
    wait_for(lambda: bus.unsettled("alerts", [ASSET_CHANGES, HEALTH]) == 0, 120, "alerts caught up")
    # Every acknowledged event is in its worker's store (a backup renamed over a live database lost them).
    health_ids = processed(home / "health.db")
    assert {e.id for _, e in published} <= health_ids
    assert {e.id for e in snapshots} <= processed(home / "metadata.db")
    changes = [r[0] for r in rows(home / "metadata.db", "SELECT COUNT(*) FROM asset_versions")]
    transitions = {str(r[0]) for r in rows(home / "health.db", "SELECT event_id FROM health_transitions")}
    assert transitions and transitions <= processed(home / "monitor.db")
    for stream in (CATALOG, RUNS, ASSETS, ASSET_CHANGES, HEALTH):
        assert bus.client.xlen(f"bk:{stream}:dlq") == 0, stream
    # Every mid-stream backup is a sound copy that restore accepts.
    for dest in backups:
        manifest = json.loads((dest / "manifest.json").read_text())
        assert set(manifest["stores"]) == {"metadata", "health", "monitor"}
        for store in ("metadata", "health", "monitor"):
            assert rows(dest / f"{store}.db", "PRAGMA integrity_check") == [("ok",)]

    # Stopped, the system takes the restore: the stores hold the backup's content; a worker starts on them.
    assert {name: w.stop() for name, w in workers.items()} == {"discovery": 0, "health": 0, "alerts": 0}
    chosen = backups[len(backups) // 2]
    code, err = cli(capsys, "restore", "--from", str(chosen))
    assert code == 0, err
    assert processed(home / "health.db") == processed(chosen / "health.db")
    assert processed(home / "monitor.db") == processed(chosen / "monitor.db")
    workers["health"].start()
    wait_for(workers["health"].ready, 60, "health ready on the restored store")
    assert workers["health"].stop() == 0
    print(
        json.dumps(
            {
                "events": len(published),
                "backups": len(backups),
                "refused_restores": len(refused),
                "asset_versions": changes[0],
                "health_events": len(health_ids),
            }
        )
    )
