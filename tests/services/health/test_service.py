"""The service on a real health.db: recording, dedupe, transitions, time-driven evaluation, retention."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from libs.common.events import CHECK_NAMES, Event, HealthChanged, dagster_check_name, parse_event
from libs.common.settings import load_settings
from libs.common.store import Store
from services.health.queries import history, latest_health
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store
from tests.services.health.conftest import Clock

DAY = 86400.0
T0 = 1_780_000_000.0


@pytest.fixture
def hsettings(tmp_path: Path) -> HealthWorkerSettings:
    return load_settings(HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path)})


@pytest.fixture
def store(hsettings: HealthWorkerSettings) -> Store:
    s = open_store(hsettings)
    yield s  # type: ignore[misc]
    s.close()


def outbox(store: Store) -> list[HealthChanged]:
    rows = store.connection().execute("SELECT payload FROM event_outbox ORDER BY seq").fetchall()
    events = [parse_event(r[0]) for r in rows]
    assert all(isinstance(e, HealthChanged) for e in events)
    return events  # type: ignore[return-value]


def counts(store: Store) -> dict[str, int]:
    conn = store.connection()
    return {
        t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in (
            "materializations",
            "executions",
            "materialization_failures",
            "asset_specs",
            "check_results",
            "asset_health",
            "health_transitions",
            "event_outbox",
        )
    }


def deliveries(*events: Event) -> list[Any]:
    from libs.common.bus import Delivery

    return [
        Delivery("assets" if e.type.startswith("asset.m") else "runs", f"{i}-0", e)  # type: ignore[arg-type]
        for i, e in enumerate(events, 1)
    ]


def small_batches(tmp_path: Path, *, batch_size: int, max_defer_s: float) -> HealthWorkerSettings:
    """Settings where a batch of `batch_size` events is full (a backlog: evaluations deferred)."""
    return load_settings(
        HealthWorkerSettings,
        dagster_home=str(tmp_path),
        stores={"data_dir": str(tmp_path)},
        bus={"batch_size": batch_size},
        health={"max_defer_s": max_defer_s},
    )


def engine_for(store: Store, settings: HealthWorkerSettings, clock: Callable[[], float]) -> HealthService:
    return HealthService(store, settings, clock=clock)


def test_failure_then_recovery_publishes_two_transitions(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    clock = Clock(T0 + 100)
    engine = engine_for(store, hsettings, clock)
    engine.handle(
        deliveries(ev.spec("a", owners=["team:data"], downstream=["b"]), ev.spec("b", upstream=["a"]))
    )
    assert outbox(store) == []  # registered, no data: UNKNOWN → UNKNOWN publishes nothing
    engine.handle(deliveries(ev.run("r1", "FAILURE", ["a"], start=T0, end=T0 + 60, error="KeyError: 'x'")))
    events = outbox(store)
    a = [e for e in events if e.data.asset_key == "a"]
    assert [(e.data.previous_status, e.data.status) for e in a] == [("UNKNOWN", "FAILED")]
    first = a[0]
    assert first.data.transition == 1
    assert first.data.owners == ["team:data"] and first.data.downstream == ["b"]
    assert [c.check for c in first.data.checks] == list(CHECK_NAMES)
    assert "KeyError" in first.data.reasons[0]
    # b's upstream failed: b has no data but a dependency warning
    b = [e for e in events if e.data.asset_key == "b"]
    assert b and b[-1].data.status == "WARNING"
    clock.t = T0 + 200
    engine.handle(
        deliveries(
            ev.run("r2", "SUCCESS", ["a"], start=T0 + 100, end=T0 + 150),
            ev.mat("a", T0 + 150, run_id="r2", rows=10),
        )
    )
    a = [e for e in outbox(store) if e.data.asset_key == "a"]
    assert [(e.data.previous_status, e.data.status) for e in a] == [
        ("UNKNOWN", "FAILED"),
        ("FAILED", "HEALTHY"),
    ]
    assert a[1].data.transition == 2 and a[1].data.changed_checks == ["execution_status"]
    (health,) = latest_health(store, "a")
    assert health.status == "HEALTHY" and health.transitions == 2 and len(health.checks) == len(CHECK_NAMES)


def test_redelivered_events_change_nothing(store: Store, hsettings: HealthWorkerSettings, ev: Any) -> None:
    engine = engine_for(store, hsettings, Clock(T0 + DAY))
    batch = deliveries(
        ev.spec("a"),
        ev.run("r1", "SUCCESS", ["a"], start=T0, end=T0 + 5),
        ev.mat("a", T0 + 5, run_id="r1", rows=3),
        ev.failed("a", "r0", T0 - 10),
    )
    engine.handle(batch)
    before = counts(store)
    snapshot = store.connection().execute("SELECT * FROM asset_health").fetchall()
    engine.handle(batch)  # redelivery, same engine
    engine2 = engine_for(store, hsettings, Clock(T0 + DAY))  # and after a restart (cold cache)
    engine2.handle(batch[1:3])
    assert counts(store) == before
    assert [tuple(r) for r in store.connection().execute("SELECT * FROM asset_health").fetchall()] == [
        tuple(r) for r in snapshot
    ]


def test_the_same_event_twice_in_one_batch_is_recorded_once(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    """A producer that retries a chunk Redis had taken (its reply lost) puts both copies in one batch."""
    engine = engine_for(store, hsettings, Clock(T0 + DAY))
    mat = ev.mat("a", T0 + 5, run_id="r1", rows=3)
    run = ev.run("r1", "SUCCESS", ["a"], start=T0, end=T0 + 5)
    engine.handle(deliveries(ev.spec("a"), run, mat, run, mat))
    rows = store.connection().execute("SELECT event_id FROM materializations").fetchall()
    assert [r[0] for r in rows] == [mat.id]
    assert store.connection().execute("SELECT COUNT(*) FROM executions").fetchone()[0] == 1


def test_unchanged_evaluation_publishes_nothing_and_new_failing_check_does(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    clock = Clock(T0)
    engine = engine_for(store, hsettings, clock)
    engine.handle(deliveries(ev.spec("a")))
    for i in range(10):
        clock.t = T0 + i * DAY + 60
        engine.handle(deliveries(ev.mat("a", T0 + i * DAY, rows=1000 + (i % 3))))
    published = len(outbox(store))
    assert published == 1  # UNKNOWN → HEALTHY once, then nothing
    clock.t = T0 + 10 * DAY + 60
    engine.handle(deliveries(ev.run("bad", "FAILURE", ["a"], start=T0 + 10 * DAY - 30, end=T0 + 10 * DAY)))
    clock.t = T0 + 10 * DAY + 120
    engine.handle(
        deliveries(ev.run("bad2", "FAILURE", ["a"], start=T0 + 10 * DAY + 60, end=T0 + 10 * DAY + 90))
    )
    events = outbox(store)
    assert len(events) == published + 1  # the longer streak changes only the reason: no event
    # now the asset is also stale by its explicit policy: a second check fails while FAILED → published
    engine.handle(deliveries(ev.spec("a", version=2, tags={"ams/freshness_max_lag": "1h"})))
    events = outbox(store)
    last = events[-1].data
    assert (last.previous_status, last.status) == ("FAILED", "FAILED")
    assert last.changed_checks == ["freshness"]
    assert {c.check: c.outcome for c in last.checks}["freshness"] == "error"


def test_freshness_is_evaluated_by_time(store: Store, hsettings: HealthWorkerSettings, ev: Any) -> None:
    clock = Clock(T0)
    engine = engine_for(store, hsettings, clock)
    engine.handle(deliveries(*[ev.mat("a", T0 - (7 - i) * DAY, rows=100) for i in range(8)]))
    assert engine.evaluate_all() == 0  # UNKNOWN → HEALTHY was published by the batch itself
    clock.t = T0 + 1.2 * DAY
    assert engine.evaluate_all() == 0
    clock.t = T0 + 2 * DAY
    assert engine.evaluate_all() == 1
    last = outbox(store)[-1].data
    assert last.status == "WARNING" and "late" in last.reasons[0]
    clock.t = T0 + 3.5 * DAY
    engine.evaluate_all()
    assert outbox(store)[-1].data.status == "DEGRADED"


def test_the_full_evaluation_takes_the_lock_a_chunk_at_a_time(
    store: Store, hsettings: HealthWorkerSettings, ev: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.health.service as service_module

    monkeypatch.setattr(service_module, "EVALUATE_ALL_CHUNK", 2)
    clock = Clock(T0)
    engine = engine_for(store, hsettings, clock)
    keys = [f"k{i}" for i in range(5)]
    engine.handle(deliveries(*[ev.mat(k, T0 - (7 - i) * DAY, rows=100) for k in keys for i in range(8)]))
    transactions: list[bool] = []
    write = store.write

    def counted() -> Any:
        transactions.append(engine.lock._is_owned())  # type: ignore[attr-defined]
        return write()

    monkeypatch.setattr(store, "write", counted)
    clock.t = T0 + 2 * DAY  # every asset is now late: five transitions
    assert engine.evaluate_all() == 5
    assert transactions == [True, True, True]  # 5 assets in chunks of 2: three transactions under the lock
    assert {e.data.asset_key for e in outbox(store)[-5:]} == set(keys)
    assert store.connection().execute("SELECT COUNT(*) FROM dirty_assets").fetchone()[0] == 0


def test_retention_keeps_latest(store: Store, hsettings: HealthWorkerSettings, ev: Any) -> None:
    clock = Clock(T0 + 200 * DAY)
    engine = engine_for(store, hsettings, clock)
    engine.handle(
        deliveries(
            *[ev.mat("a", T0 + i * DAY, rows=5) for i in range(10)],
            ev.run("r", "SUCCESS", ["a"], start=T0, end=T0 + 1),
        )
    )
    deleted = engine.retention()
    assert deleted["materializations"] == 9 and deleted["executions"] == 0
    assert len(history(store, "a", 100)) == 2


def test_spec_copy_orders_versions_and_retires(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    engine = engine_for(store, hsettings, Clock(T0 + 10))
    engine.handle(deliveries(ev.spec("a", version=2, group="g2"), ev.spec("a", version=1, group="g1")))
    spec = json.loads(store.connection().execute("SELECT spec FROM asset_specs").fetchone()[0])
    assert spec["group"] == "g2"
    engine.handle(deliveries(ev.run("r", "FAILURE", ["a"], start=T0, end=T0 + 1)))
    engine.handle(deliveries(ev.spec("a", version=3, retired=True)))
    last = outbox(store)[-1].data
    assert last.status == "UNKNOWN" and all(c.outcome == "passed" for c in last.checks)


def test_backlog_defers_evaluation_durably(store: Store, tmp_path: Path, ev: Any) -> None:
    settings = small_batches(tmp_path, batch_size=2, max_defer_s=60)
    engine = engine_for(store, settings, Clock(T0 + 10))
    full = deliveries(
        ev.run("r1", "FAILURE", ["a"], start=T0, end=T0 + 1),
        ev.run("r2", "FAILURE", ["b"], start=T0, end=T0 + 1),
    )
    engine.handle(full)  # a full batch: a backlog, evaluation deferred
    assert outbox(store) == []
    assert {r[0] for r in store.connection().execute("SELECT asset_key FROM dirty_assets")} == {"a", "b"}
    # a restart finds the deferred assets in the store and evaluates them
    restarted = engine_for(store, settings, Clock(T0 + 20))
    assert restarted.evaluate_pending() == 2
    assert {e.data.asset_key: e.data.status for e in outbox(store)} == {"a": "FAILED", "b": "FAILED"}
    assert store.connection().execute("SELECT COUNT(*) FROM dirty_assets").fetchone()[0] == 0
    restarted.handle(
        deliveries(ev.run("r3", "SUCCESS", ["a"], start=T0 + 2, end=T0 + 3))
    )  # caught up: at once
    assert outbox(store)[-1].data.status == "HEALTHY"
    assert outbox(store)[-1].data.transition == 2


def test_unknown_downstream_gets_no_health_row(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    engine = engine_for(store, hsettings, Clock(T0 + 10))
    engine.handle(
        deliveries(
            ev.spec("a", downstream=["not_yet_registered"]),
            ev.run("r", "FAILURE", ["a"], start=T0, end=T0 + 1),
        )
    )
    assert [h.asset_key for h in latest_health(store)] == ["a"]


def test_status_gauges_by_group_and_per_unhealthy_asset(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    from prometheus_client import REGISTRY

    engine = engine_for(store, hsettings, Clock(T0 + 100))
    engine.handle(deliveries(ev.spec("g/a", group="sales"), ev.spec("g/b", group="sales")))
    engine.handle(
        deliveries(
            ev.run("r1", "FAILURE", ["g/a"], start=T0, end=T0 + 60, error="boom"),
            ev.run("r2", "SUCCESS", ["g/b"], start=T0, end=T0 + 60),
            ev.mat("g/b", T0 + 60, run_id="r2", rows=5),
        )
    )
    engine.update_status_gauge()
    value = REGISTRY.get_sample_value
    assert value("ams_health_assets", {"group": "sales", "status": "FAILED"}) == 1
    assert value("ams_health_asset_status", {"asset_key": "g/a", "group": "sales", "status": "FAILED"}) == 1
    assert (
        value("ams_health_asset_status", {"asset_key": "g/b", "group": "sales", "status": "HEALTHY"}) is None
    )
    engine.handle(
        deliveries(
            ev.run("r3", "SUCCESS", ["g/a"], start=T0 + 70, end=T0 + 80),
            ev.mat("g/a", T0 + 80, run_id="r3", rows=5),
        )
    )
    engine.update_status_gauge()
    assert (
        value("ams_health_asset_status", {"asset_key": "g/a", "group": "sales", "status": "FAILED"}) is None
    )
    assert value("ams_health_assets", {"group": "sales", "status": "FAILED"}) is None


def test_a_tiny_cache_decides_as_a_large_one(tmp_path: Path, ev: Any) -> None:
    """Evicting histories and states (the cache's memory budget) changes no decision: what the cache
    drops is read again from health.db, and what a transaction uses stays pinned until its commit."""
    published: dict[str, list[tuple[str, str, int | None]]] = {}
    for budget in (None, 1):
        home = tmp_path / str(budget)
        settings = load_settings(HealthWorkerSettings, dagster_home=str(home), stores={"data_dir": str(home)})
        s = open_store(settings)
        service = HealthService(s, settings, clock=Clock(T0 + DAY))
        if budget is not None:
            service.cache.budget = budget  # every entry but the newest is evicted at once
        keys = [f"k{i}" for i in range(6)]
        service.handle(
            deliveries(
                *[
                    ev.spec(k, upstream=keys[:i][-1:], downstream=keys[i + 1 : i + 2])
                    for i, k in enumerate(keys)
                ]
            )
        )
        for day in range(3):
            service.handle(
                deliveries(
                    *[
                        ev.run(
                            f"{k}-{day}",
                            "FAILURE" if (i + day) % 3 == 0 else "SUCCESS",
                            [k],
                            start=T0 + day * 3600,
                            end=T0 + day * 3600 + 60,
                        )
                        for i, k in enumerate(keys)
                    ]
                )
            )
        service.evaluate_all()
        published[str(budget)] = [(e.data.asset_key, e.data.status, e.data.transition) for e in outbox(s)]
        if budget is not None:
            assert len(service.cache) == 1
        s.close()
    assert published["None"] == published["1"] and len(published["None"]) > 6


def test_the_periodic_pass_evaluates_the_assets_the_clock_can_change(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    clock = Clock(T0 + 60)
    service = engine_for(store, hsettings, clock)
    service.handle(
        deliveries(
            ev.spec("lagging", tags={"ams/freshness_max_lag": "1h"}),
            ev.spec("plain"),
            ev.mat("lagging", T0, rows=5),
            ev.mat("plain", T0, rows=5),
        )
    )

    def evaluated() -> dict[str, tuple[float, float | None]]:
        rows = (
            store.connection().execute("SELECT asset_key, evaluated_at, due_at FROM asset_health").fetchall()
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    assert evaluated() == {"lagging": (T0 + 60, T0 + 3600), "plain": (T0 + 60, None)}
    clock.t = T0 + 120
    service.evaluate_all()  # the first pass after a start: every asset (thresholds may have changed)
    assert {k: v[0] for k, v in evaluated().items()} == {"lagging": T0 + 120, "plain": T0 + 120}
    clock.t = T0 + 1800
    assert service.evaluate_all() == 0
    assert {k: v[0] for k, v in evaluated().items()} == {"lagging": T0 + 120, "plain": T0 + 120}  # none due
    clock.t = T0 + 3700
    assert service.evaluate_all() == 1
    assert evaluated() == {"lagging": (T0 + 3700, None), "plain": (T0 + 120, None)}
    assert outbox(store)[-1].data.status == "DEGRADED"


def test_only_declared_checks_are_reported_to_dagster(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    reported: dict[str, list[str]] = {}
    engine = HealthService(
        store,
        hsettings,
        clock=Clock(T0 + 100),
        report=lambda key, results: reported.update({key: [r.check for r in results]}),
    )
    engine.handle(
        deliveries(
            # with_health_checks applied, beside a team check that shares one of our names
            ev.spec(
                "ours",
                code_location="orchestrator",
                checks=[*map(dagster_check_name, CHECK_NAMES), "freshness"],
            ),
            ev.spec(
                "theirs", code_location="finance", checks=["row_count_positive"]
            ),  # a team's own check only
            # the team's own checks that share our names, without with_health_checks: theirs, not ours
            ev.spec("namesake", code_location="finance", checks=["freshness", "volume_anomaly"]),
        )
    )
    engine.handle(
        deliveries(ev.run("r1", "FAILURE", ["ours", "theirs", "namesake", "unknown"], start=T0, end=T0 + 60))
    )
    assert reported["ours"] == list(CHECK_NAMES)  # posted as ams_<check> (dagster_checks.check_payload)
    assert "theirs" not in reported  # nothing of ours is declared there: nothing posted, nothing errors
    assert "namesake" not in reported  # a team's `freshness` never gets our freshness result
    assert reported["unknown"] == list(CHECK_NAMES)  # no spec yet: reported as before (Dagster stores them)
    theirs = [e for e in outbox(store) if e.data.asset_key == "theirs"]
    assert theirs and theirs[-1].data.status == "FAILED" and theirs[-1].data.code_location == "finance"


def test_caught_up_after_a_long_backlog_a_batch_evaluates_its_own_assets_first(
    store: Store, tmp_path: Path, ev: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.health.service as service_module

    monkeypatch.setattr(service_module, "_EVALUATE_IN_BATCH", 2)
    settings = small_batches(tmp_path, batch_size=3, max_defer_s=60)
    service = engine_for(store, settings, Clock(T0 + 10))
    service.handle(
        deliveries(*[ev.run(f"r{k}", "FAILURE", [k], start=T0, end=T0 + 1) for k in "abc"])
    )  # backlog
    assert outbox(store) == [] and service.stats()["dirty_assets"] == 3
    service.handle(deliveries(ev.run("rz", "FAILURE", ["z"], start=T0, end=T0 + 1)))  # caught up
    assert [e.data.asset_key for e in outbox(store)] == ["z"]  # at once; the three others wait for the job
    assert service.evaluate_pending() == 3
    assert sorted(e.data.asset_key for e in outbox(store)) == ["a", "b", "c", "z"]
    assert store.connection().execute("SELECT COUNT(*) FROM dirty_assets").fetchone()[0] == 0


def test_assets_a_failed_run_only_skipped_are_blocked_by_the_upstream_that_failed(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    """root → child_a, child_b → grandchild, and an unrelated `other`; root and other fail in run r1: the
    three below root are WARNING, blocked by root alone (the lineage of the spec copies, at any depth), and
    stay so after a restart (health.db keeps which assets failed); the next good run makes them HEALTHY."""
    clock = Clock(T0 + 100)
    engine = engine_for(store, hsettings, clock)
    lineage = {
        "root": [],
        "child_a": ["root"],
        "child_b": ["root"],
        "grandchild": ["child_a", "child_b"],
        "other": [],
    }
    downstream = {"root": ["child_a", "child_b"], "child_a": ["grandchild"], "child_b": ["grandchild"]}
    specs = [ev.spec(k, upstream=up, downstream=downstream.get(k, [])) for k, up in lineage.items()]
    engine.handle(deliveries(*specs))
    keys = list(lineage)
    engine.handle(
        deliveries(
            ev.run("run-one-1", "STARTED", keys, start=T0),
            ev.failed("root", "run-one-1", T0 + 5, "ValueError: root raised"),
            ev.failed("other", "run-one-1", T0 + 6, "other raised"),
            ev.run("run-one-1", "FAILURE", keys, start=T0, end=T0 + 10, failed=["other", "root"]),
        )
    )

    def health() -> dict[str, Any]:
        return {h.asset_key: h for h in latest_health(store)}

    def check(h: Any, name: str) -> Any:
        return next(c for c in h.checks if c.check == name)

    now = health()
    assert {k: h.status for k, h in now.items()} == {
        "root": "FAILED",
        "other": "FAILED",
        "child_a": "WARNING",
        "child_b": "WARNING",
        "grandchild": "WARNING",
    }
    for key in ("child_a", "child_b", "grandchild"):
        execution = check(now[key], "execution_status")
        assert execution.outcome == "warn" and execution.values["blocked_by"] == ["root"]
        assert execution.values["blocked_run_id"] == "run-one-1"
        assert "not materialized in run run-one- at" in execution.reason
        assert "blocked by the failure of upstream root" in execution.reason
        deps = check(now[key], "dependencies")
        assert deps.outcome == "warn" and deps.values["failed_upstream"] == ["root"] and "root" in deps.reason
    events = [e for e in outbox(store) if e.data.asset_key == "grandchild"]
    last = events[-1].data
    assert (last.status, check(last, "execution_status").values.get("blocked_by")) == ("WARNING", ["root"])

    # A restart reads the histories back from health.db: the same decisions, nothing published.
    published = len(outbox(store))
    restarted = engine_for(store, hsettings, clock)
    restarted.evaluate_all()
    assert len(outbox(store)) == published
    assert check(health()["grandchild"], "execution_status").values["blocked_by"] == ["root"]

    clock.t = T0 + 300
    engine = restarted
    engine.handle(
        deliveries(
            *(ev.mat(k, T0 + 210 + i, run_id="run-two-2", rows=10) for i, k in enumerate(keys)),
            ev.run("run-two-2", "SUCCESS", keys, start=T0 + 200, end=T0 + 250),
        )
    )
    assert {k: h.status for k, h in health().items()} == dict.fromkeys(keys, "HEALTHY")


def test_a_chunk_of_the_pass_is_sized_to_hold_the_lock_briefly() -> None:
    from services.health.service import CHUNK_TARGET_S, EVALUATE_ALL_CHUNK, chunk_size

    # 100 assets in twice the target: half as many next time; in a tenth of it: at most the maximum
    assert chunk_size(100, 2 * CHUNK_TARGET_S) == 50
    assert chunk_size(10, CHUNK_TARGET_S / 10) == EVALUATE_ALL_CHUNK
    assert chunk_size(10, 100 * CHUNK_TARGET_S) == 5  # never fewer than five
    assert chunk_size(0, 0.0) == EVALUATE_ALL_CHUNK


def test_the_pass_skips_an_asset_only_awaiting_evaluation_once_evaluated_meanwhile(
    store: Store, hsettings: HealthWorkerSettings, ev: Any
) -> None:
    """Keys due by the clock are evaluated; keys picked only because they awaited evaluation are skipped
    when something evaluated them after the pass read its keys (they would be judged twice)."""
    from services.health.decide import Trigger

    clock = Clock(T0)
    engine = engine_for(store, hsettings, clock)
    keys = [f"k{i}" for i in range(4)]
    engine.handle(deliveries(*[ev.mat(k, T0 - (7 - i) * DAY, rows=100) for k in keys for i in range(8)]))
    engine.evaluate_all()  # the first pass: every asset
    conn = store.connection()

    def evaluated() -> dict[str, float]:
        return {r[0]: r[1] for r in conn.execute("SELECT asset_key, evaluated_at FROM asset_health")}

    for meanwhile in (False, True):
        with store.write() as tx:
            engine._mark_dirty(tx, ["k0", "k1"], clock.t, facts=False)  # to be judged again (a catch-up)
        picked, keep = engine._pass_keys()
        assert picked == ["k0", "k1"]
        clock.t += 60
        if meanwhile:
            assert engine.evaluate_pending() == 2  # evaluate_pending's chunk came first
        before = evaluated()
        clock.t += 60
        engine._in_chunks(picked, Trigger.CLOCK, keep)
        after = evaluated()
        assert (after == before) is meanwhile
        assert meanwhile or {k for k in keys if after[k] != before[k]} == {"k0", "k1"}
    clock.t = T0 + 2 * DAY  # now every asset is late: due by the clock, evaluated
    picked, keep = engine._pass_keys()
    engine._in_chunks(picked, Trigger.CLOCK, keep)
    assert set(evaluated().values()) == {T0 + 2 * DAY}


def test_under_a_backlog_a_batch_leaves_the_confirmations_after_a_catch_up_to_the_job(
    tmp_path: Path, ev: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full batch whose deferral is due evaluates, on the consume loop, the assets with new facts; the
    thousands awaiting only their confirmation go to `evaluate_pending`, in chunks between batches."""
    import time as time_module

    import services.health.service as service_module

    monkeypatch.setattr(service_module, "_EVALUATE_IN_BATCH", 2)
    settings = small_batches(tmp_path, batch_size=2, max_defer_s=0.001)
    s = open_store(settings)
    clock = Clock(T0)
    engine = engine_for(s, settings, clock)
    keys = [f"k{i}" for i in range(4)]
    for k in keys:  # batches that are not full: evaluated at once
        engine.handle(deliveries(ev.mat(k, T0 - 60, rows=100)))
    assert engine.stats()["dirty_assets"] == 0
    with s.write() as tx:
        engine._mark_dirty(tx, keys[1:], T0, facts=False)  # judged again on the wall clock after a catch-up
    engine._last_evaluation_s = 0.0  # the deferral is max_defer_s, not nine times a slow batch's evaluation
    time_module.sleep(0.01)  # the deferral has come
    engine.handle(deliveries(ev.mat("k0", T0, rows=100), ev.mat("k0", T0 + 1, rows=100)))  # a full batch
    waiting = {r[0] for r in s.connection().execute("SELECT asset_key FROM dirty_assets")}
    assert waiting == {"k1", "k2", "k3"} and engine.stats()["dirty_assets"] == 3
    engine.handle(deliveries(ev.mat("k0", T0 + 2, rows=100)))  # caught up: a batch that is not full
    assert engine.evaluate_pending() == 3  # the job takes them, in chunks between batches
    assert engine.stats()["dirty_assets"] == 0
    s.close()


def test_a_new_asset_is_judged_on_the_facts_in_hand_as_on_those_read_back(
    tmp_path: Path, ev: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An asset of which health.db holds nothing enters the cache with an empty history and the batch's facts:
    its first evaluation reads no history back, and decides as one reading it from health.db. An asset that
    health.db knows (after a restart, with a cold cache) is read back whole."""
    import services.health.service as service_module

    columns = [("id", "int64"), ("name", "string")]
    t = T0
    batches = [  # the same events for both services
        [
            ev.spec("a", downstream=["b"]),
            ev.run("ra1", "STARTED", ["a", "b"], start=t),
            *[ev.mat("a", t + 10 * i, run_id="ra1", rows=1000 + i, columns=columns) for i in range(3)],
            ev.run("ra1", "FAILURE", ["a", "b"], start=t, end=t + 40, error="boom", failed=["b"]),
            ev.failed("b", "ra1", t + 40),
        ],
        [
            *[ev.run(f"rc{i}", "SUCCESS", ["c"], start=t + 60 * i, end=t + 60 * i + 5) for i in range(9)],
            *[ev.mat("c", t + 60 * i + 5, run_id=f"rc{i}", rows=500, duration_s=5.0) for i in range(9)],
        ],
    ]
    after_restart = [ev.mat("a", t + 100, run_id="ra2", rows=900), ev.mat("d", t + 100)]
    published: dict[str, list[Any]] = {}
    loaded: dict[str, list[str]] = {}
    for read_back in (False, True):
        home = tmp_path / str(read_back)
        settings = load_settings(HealthWorkerSettings, dagster_home=str(home), stores={"data_dir": str(home)})
        s = open_store(settings)
        if read_back:  # the cache learns no asset from its facts alone: every history is read from health.db
            monkeypatch.setattr(service_module.db, "without_history", lambda conn, keys: [])
        reads = loaded.setdefault(str(read_back), [])
        load_history = service_module.db.load_history
        monkeypatch.setattr(
            service_module.db,
            "load_history",
            lambda conn, key, *args, _load=load_history, _reads=reads, **kw: (
                _reads.append(key) or _load(conn, key, *args, **kw)
            ),
        )
        service = HealthService(s, settings, clock=Clock(T0 + DAY))
        for batch in batches:
            service.handle(deliveries(*batch))
        restarted = HealthService(s, settings, clock=Clock(T0 + DAY))  # a cold cache over what a knows
        restarted.handle(deliveries(*after_restart))
        published[str(read_back)] = [
            (e.data.asset_key, e.data.status, [c.model_dump() for c in e.data.checks]) for e in outbox(s)
        ]
        monkeypatch.undo()
        s.close()
    assert published["False"] == published["True"] and len(published["False"]) >= 4
    # Read back: only what health.db held before the restart's batch (a, and b evaluated as its downstream).
    assert sorted(loaded["False"]) == ["a", "b"]
    assert {"a", "b", "c", "d"} <= set(loaded["True"])


def test_a_pass_judges_a_downstream_asset_again_only_for_facts_it_has_not_seen(
    tmp_path: Path, ev: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A downstream asset evaluated earlier in a pass saw the facts its upstream had then: the upstream's
    evaluation later in the pass does not judge it again (after a catch-up that was a fifth of a pass).
    Facts about the upstream recorded after it was judged (a batch between two chunks) do."""
    import services.health.service as service_module
    from services.health.decide import Trigger

    settings = small_batches(tmp_path, batch_size=2, max_defer_s=60)
    s = open_store(settings)
    engine = engine_for(s, settings, Clock(T0))
    engine.handle(deliveries(ev.spec("up", downstream=["down"]), ev.spec("down", upstream=["up"])))
    judged: list[str] = []
    evaluate_one = engine._evaluate_one

    def spy(conn: Any, entry: Any, *args: Any) -> Any:
        judged.append(entry.history.key)
        return evaluate_one(conn, entry, *args)

    monkeypatch.setattr(engine, "_evaluate_one", spy)
    engine.handle(deliveries(ev.mat("down", T0 - 60, rows=100)))  # settled: no change of health follows
    engine.handle(deliveries(ev.mat("up", T0 - 60, rows=100)))
    for between in (False, True):
        # A full batch (a backlog): recorded, its evaluation deferred; the pass meets "down" first.
        t = T0 + (10 if between else 0)
        engine.handle(deliveries(ev.mat("down", t, rows=100), ev.mat("up", t, rows=100)))
        assert set(engine._dirty) == {"down", "up"}
        sleeps = 0

        def batch_between_chunks(_: float, facts: bool = between, at: float = t) -> None:
            nonlocal sleeps
            sleeps += 1
            if facts:  # full too: "up" awaits its evaluation with newer facts
                engine.handle(deliveries(ev.mat("up", at + 1, rows=100), ev.mat("up", at + 2, rows=100)))

        with monkeypatch.context() as m:
            m.setattr(service_module, "EVALUATE_ALL_CHUNK", 1)
            m.setattr(service_module.time, "sleep", batch_between_chunks)
            judged.clear()
            engine._in_chunks(["down", "up"], Trigger.EVENTS)
        assert sleeps == 1 and not engine._dirty
        assert judged == (["down", "up", "down"] if between else ["down", "up"])
    s.close()


def test_the_two_passes_never_run_at_once(store: Store, hsettings: HealthWorkerSettings, ev: Any) -> None:
    """evaluate_pending skips its turn while the periodic pass runs (which evaluates the waiting assets
    too); the periodic pass waits for an evaluate_pending in progress."""
    import threading

    engine = engine_for(store, hsettings, Clock(T0))
    engine.handle(deliveries(ev.mat("a", T0 - 60, rows=100)))
    with store.write() as tx:
        engine._mark_dirty(tx, ["a"], T0, facts=False)
    with engine._pass_lock:  # as if the other pass were running
        assert engine.evaluate_pending() == 0
        assert engine.stats()["dirty_assets"] == 1
        done = threading.Event()
        passing = threading.Thread(target=lambda: (engine.evaluate_all(), done.set()))
        passing.start()
        assert not done.wait(0.3)  # waits for the lock
    passing.join(10)
    assert done.is_set() and engine.stats()["dirty_assets"] == 0


def test_status_gauges_are_rebuilt_at_most_a_twentieth_of_the_time(
    store: Store, hsettings: HealthWorkerSettings
) -> None:
    """A rebuild reads every asset's health: one that took 0.5 s waits 10 s before the next, not 1 s."""
    import time

    engine = engine_for(store, hsettings, Clock(T0))
    for took, rebuilt in ((0.5, False), (0.01, True)):
        engine._gauges_stale = True
        engine._gauges_refreshed = time.monotonic() - 2.0
        engine._gauges_took = took
        engine.refresh_status_gauges()
        assert engine._gauges_stale is not rebuilt
