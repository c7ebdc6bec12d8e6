"""`asset-manager simulate` and the `simulate(bus, ...)` library function, on real Redis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from asset_manager.commands.simulate import INJECTIONS, SimulationSummary, generate, simulate
from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import (
    ASSETS,
    RUNS,
    AssetMaterializationFailed,
    AssetMaterialized,
    RunEvent,
    parse_event,
)
from libs.common.settings import load_settings
from tests.asset_manager.conftest import Cli

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
    events = list(generate(assets=10, events=3000, seed=7, inject=INJECTIONS, inject_rate=0.3, now=NOW,
                           summary=summary))
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
    summary = simulate(bus, assets=8, events=900, seed=3, inject=("failure",), inject_rate=0.5,
                       progress=progressed.append, batch_size=100)
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
    code, out, err = cli.run("simulate", "--assets", "4", "--events", "120", "--seed", "9", "--inject", "failure,late")
    assert code == 0, err
    assert out.startswith("published 120 events") and "for 4 assets" in out
    assert err == ""  # no progress bar when not on a terminal
    prefix = load_settings(AppSettings).bus.prefix
    assert redis_client.xlen(f"{prefix}:{RUNS}") + redis_client.xlen(f"{prefix}:{ASSETS}") == 120
    code, _, err = cli.run("simulate", "--inject", "meteor")
    assert code == 2 and err.startswith("error: unknown --inject 'meteor'")
    code, _, err = cli.run("simulate", "--events", "0")
    assert code == 2 and err.count("\n") == 1
