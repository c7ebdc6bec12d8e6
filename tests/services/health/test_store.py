"""health.db's reads that spare the periodic pass the history of every asset: an upstream's state in one
statement (`load_upstream`), and the stored results a later evaluation may reuse (`load_reusable`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from libs.common.bus import Delivery
from libs.common.events import CheckName, Event, HealthChanged, parse_event
from libs.common.settings import load_settings
from libs.common.store import Store
from services.health import store as db
from services.health.evaluators import HISTORY_ONLY, evaluate
from services.health.model import UpstreamState
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.thresholds import resolve
from tests.services.health.conftest import Clock

DAY = 86400.0
T0 = 1_780_000_000.0


@pytest.fixture
def hsettings(tmp_path: Path) -> HealthWorkerSettings:
    return load_settings(HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path)})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, hsettings: HealthWorkerSettings) -> Store:
    """health.db on SQLite, and the same schema and statements on a real PostgreSQL."""
    if request.param == "sqlite":
        s = db.open_store(hsettings)
    else:
        s = Store(request.getfixturevalue("postgres_url"), db.MIGRATIONS)
    yield s  # type: ignore[misc]
    s.close()


def deliveries(*events: Event) -> list[Delivery]:
    return [
        Delivery("assets" if e.type.startswith("asset.m") else "runs", f"{i}-0", e)  # type: ignore[arg-type]
        for i, e in enumerate(events, 1)
    ]


def upstream_from_history(conn: Any, key: str, limit: int) -> UpstreamState:
    """What the service made of an upstream before `load_upstream`: its whole history and its state."""
    history = db.load_history(conn, key, limit)
    state = db.load_state(conn, key)
    last = history.last_materialization
    return UpstreamState(
        key=key,
        registered=history.spec is not None,
        retired=history.retired,
        status=state.status,
        execution_failed=state.outcomes.get(CheckName.EXECUTION) == "error",
        stale=state.outcomes.get(CheckName.FRESHNESS, "passed") != "passed",
        last_materialized_at=last.at if last else None,
        last_run_id=last.run_id if last else None,
    )


def test_an_upstream_read_in_one_statement_is_what_its_history_and_state_say(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    clock = Clock(T0 + DAY)
    service = HealthService(store, hsettings, clock=clock)
    service.handle(
        deliveries(
            ev.spec("failed", downstream=["down"]),
            ev.spec("stale", freshness={"maximum_lag_minutes": 1}),
            ev.spec("retired"),
            ev.spec("quiet"),  # registered, never materialized nor evaluated
            ev.spec("down", upstream=["failed", "stale", "retired", "quiet", "unknown"]),
        )
    )
    service.handle(
        deliveries(
            ev.mat("failed", T0, run_id="r1", rows=10),
            ev.mat("failed", T0, run_id="r2", rows=12),  # two at the same time: the later one is the last
            ev.run("r3", "FAILURE", ["failed"], start=T0 + 10, end=T0 + 20, error="boom"),
            ev.mat("stale", T0 - 3600, run_id="s1", rows=5),
            ev.mat("retired", T0, run_id="t1", rows=5),
        )
    )
    service.handle(deliveries(ev.spec("retired", 2, retired=True, at=T0 + 30)))
    conn = store.connection()
    for key in ("failed", "stale", "retired", "quiet", "unknown", "down"):
        assert db.load_upstream(conn, key) == upstream_from_history(conn, key, hsettings.health.history_limit)
    failed = db.load_upstream(conn, "failed")
    assert failed.execution_failed and failed.last_run_id == "r2" and failed.registered
    assert db.load_upstream(conn, "stale").stale
    assert db.load_upstream(conn, "retired").retired
    assert not db.load_upstream(conn, "unknown").registered


def test_stored_results_are_reusable_in_the_run_that_wrote_them_until_a_fact_arrives(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    service = HealthService(store, hsettings, clock=Clock(T0 + 10 * DAY))
    service.handle(deliveries(ev.spec("a")))
    service.handle(
        deliveries(
            *[ev.mat("a", T0 + d * DAY, run_id=f"r{d}", rows=1000 + d, duration_s=60.0) for d in range(10)],
            ev.run("r9", "SUCCESS", ["a"], start=T0 + 9 * DAY - 60, end=T0 + 9 * DAY),
        )
    )
    conn = store.connection()
    history = db.load_history(conn, "a", hsettings.health.history_limit)
    computed = evaluate(history, resolve(hsettings.health, history.spec), T0 + 10 * DAY, {})
    expected = {r.check: r for r in computed if r.check in HISTORY_ONLY}
    assert db.load_reusable(conn, "a", service.epoch, HISTORY_ONLY) == expected
    assert db.load_reusable(conn, "a", "another run", HISTORY_ONLY) == {}
    # Judged again on the wall clock only (after a catch-up): the history, and so the results, unchanged.
    with store.write() as tx:
        db.mark_dirty(tx, ["a"], T0, facts=False)
    assert db.load_reusable(conn, "a", service.epoch, HISTORY_ONLY) == expected
    # A fact since: they no longer hold, even when the asset was marked for confirmation first.
    with store.write() as tx:
        db.mark_dirty(tx, ["a"], T0, facts=True)
    assert db.load_reusable(conn, "a", service.epoch, HISTORY_ONLY) == {}
    with store.write() as tx:
        db.clear_dirty(tx)
        db.mark_dirty(tx, ["a"], T0, facts=True)
        db.mark_dirty(tx, ["a"], T0, facts=False)  # a confirmation does not hide the fact
    assert db.load_reusable(conn, "a", service.epoch, HISTORY_ONLY) == {}


def scenario(home: Path, ev: Any, variant: str) -> list[Any]:
    """Five assets in a chain, forty days of history (more than an evaluation reusing the history-only
    results reads), then a volume drop, a run in progress, a failure and a run it blocked, with periodic
    passes in between; the events published and the results stored."""
    settings = load_settings(HealthWorkerSettings, dagster_home=str(home), stores={"data_dir": str(home)})
    s = db.open_store(settings)
    clock = Clock(T0)
    service = HealthService(s, settings, clock=clock)
    if variant != "warm":
        service.cache.budget = 1  # every entry but the newest is evicted at once
    steps = iter(range(1_000))

    def handle(*events: Event) -> None:
        if variant == "recompute":
            service.epoch = f"step-{next(steps)}"
        service.handle(deliveries(*events))

    def evaluate_all(t: float) -> None:
        clock.t = t
        if variant == "recompute":
            service.epoch = f"step-{next(steps)}"
        service.evaluate_all()

    keys = [f"k{i}" for i in range(5)]
    handle(*[ev.spec(k, upstream=keys[:i][-1:], downstream=keys[i + 1 : i + 2]) for i, k in enumerate(keys)])
    for day in range(40):
        clock.t = T0 + day * DAY + 600
        handle(
            *[
                ev.mat(k, T0 + day * DAY + i, run_id=f"{k}-{day}", rows=1000 + 10 * day + i, duration_s=60.0)
                for i, k in enumerate(keys)
            ]
        )
    for t in (40.1, 40.6, 41.5):
        evaluate_all(T0 + t * DAY)
    clock.t = T0 + 42 * DAY
    handle(
        ev.mat("k2", T0 + 42 * DAY, run_id="drop", rows=3, duration_s=60.0),
        ev.run("long", "STARTED", ["k3"], start=T0 + 42 * DAY - 60),
        ev.run("bad", "FAILURE", ["k0", "k1"], start=T0 + 42 * DAY - 30, end=T0 + 42 * DAY, failed=["k0"]),
    )
    for t in (42.2, 43.0, 45.0):
        evaluate_all(T0 + t * DAY)
    conn = s.connection()
    staged = [parse_event(r[0]) for r in conn.execute("SELECT payload FROM event_outbox ORDER BY seq")]
    events = [
        (e.data.asset_key, e.data.status, e.data.transition, [c.model_dump() for c in e.data.checks])
        for e in staged
        if isinstance(e, HealthChanged)
    ]
    assert len(events) == len(staged)
    rows = conn.execute(
        "SELECT asset_key, check_name, outcome, reason, check_values, evaluated_at FROM check_results "
        "ORDER BY asset_key, check_name"
    ).fetchall()
    s.close()
    return [events, [tuple(r) for r in rows]]


def test_a_cold_cache_reusing_stored_results_decides_as_a_warm_one_and_as_one_recomputing(
    tmp_path: Path, ev: Any
) -> None:
    """Three services fed the same facts: a large cache, a cache of one entry (every evaluation reads the
    stored history-only results back), and the same with a new run before every step (nothing reused
    across steps). Every published event and every stored result is the same."""
    seen = {variant: scenario(tmp_path / variant, ev, variant) for variant in ("warm", "cold", "recompute")}
    assert seen["cold"] == seen["warm"] == seen["recompute"]
    events, rows = seen["warm"]
    outcomes = {(r[0], r[1]): r[2] for r in rows}
    assert outcomes[("k2", CheckName.VOLUME)] != "passed" and outcomes[("k0", CheckName.EXECUTION)] == "error"
    assert outcomes[("k1", CheckName.EXECUTION)] == "warn"  # blocked by k0
    assert len(events) > 5


def test_stored_results_outlive_a_restart_with_the_same_code_and_settings_only(
    store: Store, hsettings: HealthWorkerSettings, tmp_path: Path
) -> None:
    restarted = HealthService(store, hsettings, clock=Clock(T0))
    assert restarted.epoch == HealthService(store, hsettings, clock=Clock(T0)).epoch
    stricter = load_settings(
        HealthWorkerSettings,
        dagster_home=str(tmp_path),
        stores={"data_dir": str(tmp_path)},
        health={"defaults": {"volume_sensitivity": 2.5}},
    )
    assert HealthService(store, stricter, clock=Clock(T0)).epoch != restarted.epoch


def test_retention_makes_the_stored_results_of_the_assets_it_shortens_stale(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    clock = Clock(T0 + 10 * DAY)
    service = HealthService(store, hsettings, clock=clock)
    service.handle(deliveries(ev.spec("old"), ev.spec("new")))
    service.handle(
        deliveries(
            *[ev.mat("old", T0 + d * DAY, run_id=f"o{d}", rows=100 + d) for d in range(10)],
            *[ev.mat("new", T0 + 9 * DAY + h * 3600, run_id=f"n{h}", rows=100 + h) for h in range(10)],
        )
    )
    conn = store.connection()
    assert db.load_reusable(conn, "old", service.epoch, HISTORY_ONLY)
    clock.t = T0 + (hsettings.health.retention_days + 5) * DAY
    assert service.retention()["materializations"] > 0
    assert db.load_reusable(conn, "old", service.epoch, HISTORY_ONLY) == {}
    assert db.load_reusable(conn, "new", service.epoch, HISTORY_ONLY)


def test_why_an_asset_awaits_evaluation_outlives_a_restart(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    with store.write() as tx:
        db.mark_dirty(tx, ["facts", "both"], T0, facts=True)
        db.mark_dirty(tx, ["confirm", "both"], T0, facts=False)
    assert db.dirty_assets(store.connection()) == {"facts": True, "both": True, "confirm": False}
    restarted = HealthService(store, hsettings, clock=Clock(T0))
    assert restarted._dirty == {"facts": True, "both": True, "confirm": False}
