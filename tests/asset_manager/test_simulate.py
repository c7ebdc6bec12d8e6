"""`asset-manager simulate` and the `simulate(bus, ...)` library function, on real Redis."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from asset_manager.commands.simulate import INJECTIONS, SimulationSummary, generate, simulate
from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import (
    ASSETS,
    HEALTH,
    RUNS,
    AssetMaterializationFailed,
    AssetMaterialized,
    Event,
    MaterializationData,
    RunData,
    RunEvent,
    new_event,
    parse_event,
)
from libs.common.settings import load_settings
from libs.common.testing import ServiceProcess, wait_for
from tests.asset_manager.conftest import Cli
from tests.asset_manager.test_alerts_cli import alerting, receiver  # noqa: F401 (fixtures)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def bus(redis_url: str, bus_prefix: str) -> Iterator[Bus]:
    settings = load_settings(AppSettings, redis={"url": redis_url}, bus={"prefix": bus_prefix})
    client = connect(settings.redis)
    yield Bus(client, settings.bus)
    client.close()


def read_all(client: redis.Redis, key: str) -> list[object]:
    return [parse_event(fields[b"event"]) for _, fields in client.xrange(key)]


def test_normal_history_is_consistent() -> None:
    events = list(generate(assets=5, events=600, seed=1, inject=(), now=NOW))
    assert len(events) == 600
    runs: dict[str, list[str]] = {}
    for stream, event in events:
        if isinstance(event, RunEvent):
            assert stream == RUNS
            runs.setdefault(event.data.run_id, []).append(event.type)
        else:
            assert stream == ASSETS and isinstance(event, AssetMaterialized)
            assert event.data.row_count is not None and event.data.column_schema
        assert event.occurred_at <= NOW
    complete = [types for types in runs.values() if len(types) == 2]
    assert all(t == ["run.started", "run.succeeded"] for t in complete)
    assets = {e.data.asset_key for _, e in events if isinstance(e, AssetMaterialized)}
    assert len(assets) == 5 and all(a.startswith("sim/") for a in assets)
    starts = [e.occurred_at for _, e in events if e.type == "run.started"]
    assert starts == sorted(starts)
    # the same seed gives the same events (same ids); another seed other ones
    again = [e.id for _, e in generate(assets=5, events=600, seed=1, inject=(), now=NOW)]
    assert again == [e.id for _, e in events]
    assert set(again).isdisjoint(e.id for _, e in generate(assets=5, events=600, seed=2, inject=(), now=NOW))


def test_injections_follow_the_history() -> None:
    summary = SimulationSummary()
    events = list(
        generate(assets=10, events=3000, seed=7, inject=INJECTIONS, inject_rate=0.3, now=NOW, summary=summary)
    )
    assert set(summary.injected) == set(INJECTIONS)
    failed = [e for _, e in events if isinstance(e, AssetMaterializationFailed)]
    assert len(failed) == summary.failures == summary.injected["failure"]
    assert all(e.data.error for e in failed)
    first_failure = next(i for i, (_, e) in enumerate(events) if isinstance(e, AssetMaterializationFailed))
    assert first_failure >= 0.6 * 3000  # normal history first
    # volume anomalies: some row counts far from their asset's median
    by_asset: dict[str, list[int]] = {}
    for _, e in events:
        if isinstance(e, AssetMaterialized) and e.data.row_count is not None:
            by_asset.setdefault(e.data.asset_key, []).append(e.data.row_count)
    ratios = [max(v) / max(1, sorted(v)[len(v) // 2]) for v in by_asset.values()]
    assert max(ratios) > 3
    # schema changes: some asset has more than one column schema over time
    schemas: dict[str, set[tuple[str, ...]]] = {}
    for _, e in events:
        if isinstance(e, AssetMaterialized):
            schemas.setdefault(e.data.asset_key, set()).add(tuple(c.name for c in e.data.column_schema or []))
    assert any(len(s) > 1 for s in schemas.values())
    with pytest.raises(ValueError, match="unknown injection"):
        list(generate(events=3, inject=("meteor",)))


def test_simulate_publishes_to_redis(bus: Bus) -> None:
    progressed: list[int] = []
    summary = simulate(
        bus,
        assets=8,
        events=900,
        seed=3,
        inject=("failure",),
        inject_rate=0.5,
        progress=progressed.append,
        batch_size=100,
    )
    assert summary.events == 900 and sum(progressed) == 900
    runs = read_all(bus.client, bus.key(RUNS))
    assets = read_all(bus.client, bus.key(ASSETS))
    assert len(runs) + len(assets) == 900
    kinds = Counter(e.type for e in runs + assets)  # type: ignore[attr-defined]
    assert kinds["run.failed"] > 0 and kinds["asset.materialization_failed"] == kinds["run.failed"]


def test_simulate_paces_to_the_rate(bus: Bus) -> None:
    summary = simulate(bus, assets=3, events=200, rate=2000, seed=4, inject=())
    assert summary.events == 200
    # paced, not a burst: the last chunk (rate / 50 events) goes out without waiting, hence the bound
    assert summary.seconds >= (200 - 2000 / 50) / 2000


def test_cli(cli: Cli, redis_client: redis.Redis) -> None:
    code, out, err = cli.run(
        "simulate", "--assets", "4", "--events", "120", "--seed", "9", "--inject", "failure,late"
    )
    assert code == 0, err
    assert out.startswith("published 120 events") and "for 4 assets" in out
    assert err == ""  # no progress bar when not on a terminal
    prefix = load_settings(AppSettings).bus.prefix
    assert redis_client.xlen(f"{prefix}:{RUNS}") + redis_client.xlen(f"{prefix}:{ASSETS}") == 120
    code, _, err = cli.run("simulate", "--inject", "meteor")
    assert code == 2 and err.startswith("error: unknown --inject 'meteor'")
    code, _, err = cli.run("simulate", "--events", "0")
    assert code == 2 and err.count("\n") == 1


# -- --clean: the simulated assets leave no trace, and nothing else is touched -----------------------------

REAL = "sales/orders"


def _rows(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def _publish_real_run(bus: Bus, key: str, run_id: str, source: str = "dagster") -> None:
    """A real run of `key` as the sensor publishes it: started, materialized, succeeded."""
    at = datetime.now(UTC) - timedelta(minutes=5)
    base = {"run_id": run_id, "job_name": "orders_job", "asset_keys": [key]}
    bus.publish_many(
        RUNS,
        [
            new_event(
                RunEvent,
                "run.started",
                identity=f"{run_id}:STARTED",
                source=source,
                occurred_at=at,
                data=RunData(status="STARTED", started_at=at, **base),
            ),
            new_event(
                RunEvent,
                "run.succeeded",
                identity=f"{run_id}:SUCCESS",
                source=source,
                occurred_at=at,
                data=RunData(status="SUCCESS", started_at=at, ended_at=at, duration_s=1.0, **base),
            ),
        ],
    )
    bus.publish_many(
        ASSETS,
        [
            new_event(
                AssetMaterialized,
                "asset.materialized",
                identity=f"{run_id}:{key}",
                source=source,
                occurred_at=at,
                data=MaterializationData(asset_key=key, run_id=run_id, row_count=100, duration_s=1.0),
            )
        ],
    )


def _events(client: redis.Redis, key: str) -> list[Event]:
    return [parse_event(fields[b"event"]) for _, fields in client.xrange(key)]


def _stream_keys(client: redis.Redis, key: str) -> set[str]:
    found: set[str] = set()
    for event in _events(client, key):
        data: Any = event.data
        found.update(getattr(data, "asset_keys", None) or [data.asset_key])
    return found


def _workers(cli: Cli, tmp: Path, *names: str) -> list[ServiceProcess]:
    # The simulated history reaches hours back: health replays it, and announces once quiet for 2 s.
    env = {
        **os.environ,
        "PYTHONPATH": cli.env["PYTHONPATH"],
        "AMS_BUS__BLOCK_MS": "200",
        "AMS_ALERTS__FLAP_WINDOW_S": "0",
        "AMS_HEALTH__CATCH_UP_QUIET_S": "2",
    }
    ports = {n: int(env[f"AMS_SERVICES__{n.upper()}__PORT"]) for n in names}  # where running_workers looks
    workers = [ServiceProcess.service(n, env, tmp / f"{n}.log", port=ports[n]) for n in names]
    wait_for(
        lambda: all(w.answers() and w.ready() for w in workers),
        60,
        "workers ready",
        lambda: "\n".join(w.output() for w in workers),
    )
    return workers


def _caught_up(client: redis.Redis, prefix: str) -> bool:
    for stream in (RUNS, ASSETS, HEALTH):
        last = client.xinfo_stream(f"{prefix}:{stream}")["last-generated-id"]
        groups = client.xinfo_groups(f"{prefix}:{stream}")
        if not groups or any(g["pending"] or g["last-delivered-id"] != last for g in groups):
            return False
    return True


def test_clean_removes_every_trace_of_the_simulation_and_nothing_else(
    alerting: Cli,  # noqa: F811 (the fixture imported above)
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    settings = load_settings(AppSettings)
    bus = Bus(redis_client, settings.bus)
    health_db, monitor_db = alerting.home / "health.db", alerting.home / "monitor.db"
    code, _, err = alerting.run("init", "--no-demo")
    assert code == 0, err
    _publish_real_run(bus, REAL, "run-real-1")
    code, out, err = alerting.run(
        "simulate",
        "--assets",
        "4",
        "--events",
        "240",
        "--seed",
        "5",
        "--inject",
        "failure",
        "--inject-rate",
        "0.5",
    )
    assert code == 0, err
    assert "the real streams" in out and "asset-manager simulate --clean --prefix sim" in out
    workers = _workers(alerting, tmp_path, "health", "alerts")
    try:
        wait_for(
            lambda: _rows(
                monitor_db,
                "SELECT 1 FROM notifications WHERE incident_id IN "
                "(SELECT incident_id FROM alerts WHERE asset_key LIKE 'sim/%')",
            ),
            60,
            "notices about simulated failures",
            lambda: workers[1].output(),
        )
        wait_for(lambda: _caught_up(redis_client, settings.bus.prefix), 60, "workers caught up")
        assert _rows(health_db, "SELECT 1 FROM asset_health WHERE asset_key = ?", REAL)
        before = {db: _rows(db, "SELECT COUNT(*) FROM executions") for db in (health_db,)}
        # Removing under running workers is refused, and changes nothing.
        code, _, err = alerting.run("simulate", "--clean")
        assert code == 1 and err.startswith("error: refusing to clean while workers run: health"), err
        assert "alerts" in err
        assert {db: _rows(db, "SELECT COUNT(*) FROM executions") for db in (health_db,)} == before
    finally:
        assert [w.stop() for w in workers] == [0, 0]

    real_rows = {
        "health": _rows(health_db, "SELECT * FROM executions WHERE asset_key = ?", REAL)
        + _rows(health_db, "SELECT * FROM asset_health WHERE asset_key = ?", REAL),
        "runs": [e.id for e in _events(redis_client, bus.key(RUNS)) if e.source == "dagster"],
    }
    code, out, err = alerting.run("simulate", "--clean")
    assert code == 0, err
    assert out.startswith("removed every trace of 4 simulated assets under sim/:"), out
    assert "health.db" in out and "monitor.db  alert_states" in out and f"{bus.key(RUNS)} " in out
    for table in (
        "executions",
        "materializations",
        "materialization_failures",
        "check_results",
        "asset_health",
        "health_transitions",
        "dirty_assets",
    ):
        assert not _rows(health_db, f"SELECT 1 FROM {table} WHERE asset_key LIKE 'sim/%'"), table
    for table in ("alert_states", "alerts"):
        assert not _rows(monitor_db, f"SELECT 1 FROM {table} WHERE asset_key LIKE 'sim/%'"), table
    assert not _rows(monitor_db, "SELECT 1 FROM incidents WHERE root_asset LIKE 'sim/%'")
    assert not _rows(
        monitor_db, "SELECT 1 FROM asset_edges WHERE upstream LIKE 'sim/%' OR downstream LIKE 'sim/%'"
    )
    assert not _rows(
        monitor_db,
        "SELECT 1 FROM notifications n WHERE NOT EXISTS "
        "(SELECT 1 FROM incidents i WHERE i.id = n.incident_id)",
    )
    assert not _rows(
        monitor_db,
        "SELECT 1 FROM alert_history h WHERE NOT EXISTS "
        "(SELECT 1 FROM alert_states s WHERE s.fingerprint = h.fingerprint)",
    )
    for stream in (RUNS, ASSETS, HEALTH):
        assert not {k for k in _stream_keys(redis_client, bus.key(stream)) if k.startswith("sim/")}, stream
    # The real asset is untouched: its history, its health, its events.
    assert (
        _rows(health_db, "SELECT * FROM executions WHERE asset_key = ?", REAL)
        + _rows(health_db, "SELECT * FROM asset_health WHERE asset_key = ?", REAL)
        == real_rows["health"]
    )
    assert [e.id for e in _events(redis_client, bus.key(RUNS))] == real_rows["runs"]
    code, out, _ = alerting.run("simulate", "--clean")
    assert (code, out.strip()) == (
        0,
        "nothing to remove: no simulated asset under sim/ in health.db, monitor.db or the streams",
    )

    # The same simulation published again is recorded again (its event ids were forgotten with it).
    code, _, err = alerting.run(
        "simulate", "--assets", "4", "--events", "240", "--seed", "5", "--inject", "none"
    )
    assert code == 0, err
    workers = _workers(alerting, tmp_path, "health")
    try:
        recorded = "SELECT DISTINCT asset_key FROM executions WHERE asset_key LIKE 'sim/%'"
        wait_for(
            lambda: len(_rows(health_db, recorded)) == 4,
            60,
            "simulated assets recorded again",
            lambda: workers[0].output(),
        )
    finally:
        assert workers[0].stop() == 0


def test_clean_refuses_what_is_not_simulated_or_not_yet_handled(cli: Cli, redis_client: redis.Redis) -> None:
    settings = load_settings(AppSettings)
    bus = Bus(redis_client, settings.bus)
    code, _, err = cli.run("simulate", "--clean", "--prefix", "/")
    assert code == 2 and err == "error: --clean needs a non-empty --prefix (it would match every asset)\n"
    code, _, err = cli.run("simulate", "--assets", "2", "--events", "30")
    assert code == 0, err
    # A real run under the prefix: the prefix is not the simulation's alone.
    _publish_real_run(bus, "sim/finance/ledger", "run-real-2")
    code, _, err = cli.run("simulate", "--clean")
    assert code == 1 and err.count("\n") == 1, err
    assert "refusing to clean sim/: not only simulated assets there: sim/finance/ledger in" in err
    assert "(source 'dagster')" in err
    # A consumer group that has not read everything: what it has not read would come back after a clean.
    redis_client.xgroup_create(bus.key(RUNS), "health", id="0")
    code, _, err = cli.run("simulate", "--clean", "--prefix", "other")
    assert code == 1 and "refusing to clean while workers have not caught up: health on " in err, err
    # Nothing was removed by the refusals.
    assert redis_client.xlen(bus.key(RUNS)) + redis_client.xlen(bus.key(ASSETS)) == 33
    # Without the real run and the lagging group, what is left under sim/ is the simulation's: published,
    # never handled (no store was created), removed from the streams alone.
    redis_client.xgroup_destroy(bus.key(RUNS), "health")
    for stream in (RUNS, ASSETS):
        real = [
            i
            for i, e in zip(
                (i for i, _ in redis_client.xrange(bus.key(stream))),
                _events(redis_client, bus.key(stream)),
                strict=True,
            )
            if e.source == "dagster"
        ]
        redis_client.xdel(bus.key(stream), *real)
    code, out, err = cli.run("simulate", "--clean")
    assert code == 0, err
    assert out.startswith("removed the stream entries of simulated assets under sim/ (no store held them):")
    assert redis_client.xlen(bus.key(RUNS)) + redis_client.xlen(bus.key(ASSETS)) == 0
    assert not list(cli.home.glob("*.db"))
