"""Incidents on a real monitor.db: a failed root and the assets it blocked are one incident, one notice per
receiver naming all of them, whatever order their health events arrive in."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from libs.common.bus import Delivery
from libs.common.events import (
    ASSET_CHANGES,
    HEALTH,
    AssetChanged,
    AssetChangeData,
    AssetSpecData,
    CheckResult,
    HealthChanged,
    HealthChangedData,
    from_timestamp,
    new_event,
)
from libs.common.settings import load_settings
from libs.common.store import Store
from services.alerts import queries
from services.alerts.service import AlertService
from services.alerts.settings import AlertsWorkerSettings
from services.alerts.store import open_store

T0 = 1_800_000_000.0
LINEAGE = {
    "shop/root": [],
    "shop/child_a": ["shop/root"],
    "shop/child_b": ["shop/root"],
    "shop/grandchild": ["shop/child_a", "shop/child_b"],
}
OWNERS = {
    "shop/root": ["ann@example.com"],
    "shop/child_a": ["bob@example.com"],
    "shop/child_b": ["team:finance"],
    "shop/grandchild": ["cat@example.com"],
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_settings(home: Path) -> AlertsWorkerSettings:
    return load_settings(
        AlertsWorkerSettings,
        dagster_home=str(home),
        logging={"file": None},
        alerts={
            "incident_wait_s": 0,  # notices at once: these tests are about other rules
            "receivers": [
                {"name": "ops", "url": "http://127.0.0.1:9/ops"},
                {"name": "finance", "url": "http://127.0.0.1:9/fin"},
            ],
            "routes": [{"receivers": ["finance"], "teams": ["finance"], "continue": True}],
            "default_receivers": ["ops"],
        },
    )


def specs() -> list[Delivery]:
    out = []
    for key, upstream in LINEAGE.items():
        downstream = [k for k, ups in LINEAGE.items() if key in ups]
        data = AssetChangeData(
            spec=AssetSpecData(key=key, owners=OWNERS[key], upstream=upstream, downstream=downstream),
            version=1,
        )
        event = new_event(AssetChanged, "asset.registered", identity=key, data=data, source="test")
        out.append(Delivery(ASSET_CHANGES, "1-0", event))
    return out


def health(
    key: str, status: str, checks: Sequence[tuple[str, str, dict[str, Any]]], n: int, at: float
) -> Delivery:
    results = [CheckResult(check=c, outcome=o, reason=f"{c} {o}", values=v) for c, o, v in checks]  # type: ignore[arg-type]
    data = HealthChangedData(
        asset_key=key,
        status=status,
        previous_status="UNKNOWN",
        checks=results,  # type: ignore[arg-type]
        evaluated_at=from_timestamp(at),
        owners=OWNERS[key],
    )
    event = new_event(HealthChanged, "health.changed", identity=f"{key}|{n}", data=data, source="test")
    return Delivery(HEALTH, f"{n}-0", event)


def failing(n: int, at: float) -> dict[str, Delivery]:
    """The root failed on its own; the others were blocked by it (what the health service publishes)."""
    out = {"shop/root": health("shop/root", "FAILED", [("execution_status", "error", {})], n, at)}
    for key in ("shop/child_a", "shop/child_b", "shop/grandchild"):
        out[key] = health(
            key,
            "WARNING",
            [
                ("execution_status", "warn", {"blocked_by": ["shop/root"]}),
                ("dependencies", "warn", {"failed_upstream": LINEAGE[key]}),
            ],
            n,
            at,
        )
    return out


def recovered(n: int, at: float) -> list[Delivery]:
    return [
        health(key, "HEALTHY", [("execution_status", "passed", {}), ("dependencies", "passed", {})], n, at)
        for key in LINEAGE
    ]


def notifications(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM notifications ORDER BY rowid")]


def incidents(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM incidents ORDER BY id")]


@pytest.mark.parametrize("order", list(itertools.permutations(LINEAGE))[::5])
def test_one_batch_in_any_order_is_one_incident_with_one_notice_per_receiver(
    tmp_path: Path, order: tuple[str, ...]
) -> None:
    store = open_store(make_settings(tmp_path))
    clock = Clock()
    service = AlertService(store, make_settings(tmp_path), clock=clock)
    try:
        service.handle(specs())
        events = failing(1, T0)
        service.handle([events[key] for key in order])
        (incident,) = incidents(store)
        assert incident["status"] == "open" and incident["root_asset"] == "shop/root"
        sent = notifications(store)
        assert sorted(r["receiver"] for r in sent) == ["finance", "ops"]  # child_b's team reaches finance too
        for row in sent:
            payload = json.loads(row["content"])
            assert payload["kind"] == "firing" and payload["incident_id"] == incident["id"]
            assert payload["asset_key"] == "shop/root" and payload["check"] == "execution_status"
            named = {(m["asset_key"], tuple(m["owners"])) for m in payload["members"]}
            assert {(k, tuple(v)) for k, v in OWNERS.items()} <= named
            assert payload["severity"] == "critical"
        alerts = queries.list_alerts(store)
        assert len(alerts) == 7 and {a["asset_key"] for a in alerts if a["severity"] == "critical"} == {
            "shop/root"
        }

        clock.now += 600
        service.handle(recovered(2, clock.now))
        (incident,) = incidents(store)
        assert incident["status"] == "resolved" and incident["resolved_at"] == clock.now
        resolved = [r for r in notifications(store) if r["kind"] == "resolved"]
        assert sorted(r["receiver"] for r in resolved) == ["finance", "ops"]
        assert len(notifications(store)) == 4
    finally:
        store.close()


@pytest.mark.parametrize(
    "order",
    [
        ("shop/grandchild", "shop/child_a", "shop/child_b", "shop/root"),
        ("shop/child_b", "shop/root", "shop/grandchild", "shop/child_a"),
    ],
)
def test_one_event_per_batch_in_any_order_ends_as_the_same_incident(
    tmp_path: Path, order: tuple[str, ...]
) -> None:
    """Members arriving one batch at a time: the incidents a late root links together merge into one, and
    each receiver of an absorbed incident is told it was merged (its key resolved)."""
    store = open_store(make_settings(tmp_path))
    clock = Clock()
    service = AlertService(store, make_settings(tmp_path), clock=clock)
    try:
        service.handle(specs())
        events = failing(1, T0)
        for key in order:
            clock.now += 1
            service.handle([events[key]])
        open_ = [i for i in incidents(store) if i["status"] == "open"]
        assert len(open_) == 1 and open_[0]["root_asset"] == "shop/root"
        with store.read() as conn:
            grouped = {r[0] for r in conn.execute("SELECT DISTINCT incident_id FROM alerts")}
        assert grouped == {open_[0]["id"]}
        merged = [i for i in incidents(store) if i["status"] == "merged"]
        assert all(i["merged_into"] == open_[0]["id"] for i in merged)
        sent = notifications(store)
        for incident in merged:
            if incident["announced_at"] is not None:
                assert {r["kind"] for r in sent if r["incident_id"] == incident["id"]} >= {"merged"}
        last = json.loads([r for r in sent if r["incident_id"] == open_[0]["id"]][-1]["content"])
        assert {m["asset_key"] for m in last["members"]} == set(LINEAGE)

        service.handle(recovered(2, clock.now + 60))
        assert [i["status"] for i in incidents(store) if i["id"] == open_[0]["id"]] == ["resolved"]
    finally:
        store.close()


def test_acknowledging_one_alert_acknowledges_its_incident(tmp_path: Path) -> None:
    store = open_store(make_settings(tmp_path))
    clock = Clock()
    service = AlertService(store, make_settings(tmp_path), clock=clock)
    try:
        service.handle(specs())
        service.handle(list(failing(1, T0).values()))
        child = next(a for a in queries.list_alerts(store) if a["asset_key"] == "shop/child_a")
        clock.now += 120
        row = service.acknowledge(child["id"], "ann", "on it")
        assert row["acknowledged"] == 7
        (incident,) = incidents(store)
        assert incident["acked_by"] == "ann" and incident["acked_at"] - incident["opened_at"] == 120
        assert all(a["status"] == "acknowledged" for a in queries.list_alerts(store))
    finally:
        store.close()


def test_an_incident_whose_root_is_retired_resolves_when_its_members_do(tmp_path: Path) -> None:
    store = open_store(make_settings(tmp_path))
    clock = Clock()
    service = AlertService(store, make_settings(tmp_path), clock=clock)
    try:
        service.handle(specs())
        events = failing(1, T0)
        service.handle([events["shop/root"], events["shop/child_a"]])
        retire = AssetChangeData(
            spec=AssetSpecData(key="shop/root", owners=OWNERS["shop/root"]),
            version=2,
            retired_at=from_timestamp(T0 + 60),
        )
        clock.now += 60
        service.handle(
            [
                Delivery(
                    ASSET_CHANGES,
                    "2-0",
                    new_event(
                        AssetChanged,
                        "asset.retired",
                        identity="r",
                        data=retire,
                        source="test",
                        occurred_at=from_timestamp(T0 + 60),
                    ),
                )
            ]
        )
        (incident,) = incidents(store)
        assert incident["status"] == "open"  # child_a still fires
        root_alert = queries.get_alert(store, incident["root_alert_id"])
        assert root_alert is not None and root_alert["status"] == "resolved"
        assert ("resolved", "asset retired") in [(h["event"], h["reason"]) for h in root_alert["history"]]
        clock.now += 60
        service.handle(
            [
                health(
                    "shop/child_a",
                    "HEALTHY",
                    [("execution_status", "passed", {}), ("dependencies", "passed", {})],
                    3,
                    clock.now,
                )
            ]
        )
        assert incidents(store)[0]["status"] == "resolved"
    finally:
        store.close()


def test_replayed_alerts_join_incidents_only_once_confirmed_live(tmp_path: Path) -> None:
    """Catch-up: the history shows the root failing, child_a's volume dropping meanwhile, the root
    recovering. Only the volume drop is confirmed live: its incident holds it alone, so the notice names
    nothing of the past (a root that recovered, the assets it blocked), which a later event of the backlog
    may have superseded anyway."""
    store = open_store(make_settings(tmp_path))
    clock = Clock()
    service = AlertService(store, make_settings(tmp_path), clock=clock)

    def replayed(delivery: Delivery) -> Delivery:
        data = delivery.event.data.model_copy(update={"replay": True})  # type: ignore[attr-defined]
        event = delivery.event.model_copy(update={"data": data})
        return Delivery(delivery.stream, delivery.entry_id, event)

    def volume(n: int, at: float) -> Delivery:
        checks = [
            ("execution_status", "passed", {}),
            ("dependencies", "passed", {}),
            ("volume_anomaly", "error", {}),
        ]
        return health("shop/child_a", "FAILED", checks, n, at)

    try:
        service.handle(specs())
        clock.now = T0 + 7200  # the history is read later than it happened
        service.handle([replayed(d) for d in failing(1, T0).values()])
        service.handle([replayed(volume(2, T0 + 300))])
        others = [d for d in recovered(3, T0 + 600) if d.event.data.asset_key != "shop/child_a"]  # type: ignore
        service.handle([replayed(d) for d in others])
        assert notifications(store) == []  # nothing announced while replaying
        clock.now += 60
        service.handle([volume(4, clock.now)])  # confirmed live after the catch-up
        (incident,) = [i for i in incidents(store) if i["status"] == "open"]
        assert (incident["root_asset"], incident["root_check"]) == ("shop/child_a", "volume_anomaly")
        assert notifications(store)
        for row in notifications(store):
            payload = json.loads(row["content"])
            assert payload["kind"] == "firing" and payload["incident_id"] == incident["id"]
            members = [(m["asset_key"], m["check"]) for m in payload["members"]]
            assert members == [("shop/child_a", "volume_anomaly")]
    finally:
        store.close()


def test_a_backlog_read_in_full_batches_sends_only_what_is_current_once_caught_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path).model_copy(
        update={"bus": make_settings(tmp_path).bus.model_copy(update={"batch_size": 2})}
    )
    store = open_store(settings)
    clock = Clock()
    service = AlertService(store, settings, clock=clock)
    try:
        service.handle(specs()[:2])  # full: behind
        blip = failing(1, T0)
        service.handle([blip["shop/root"], blip["shop/child_a"]])  # full: behind, held
        fixed = recovered(2, T0 + 60)
        service.handle(fixed[:2])  # the backlog already resolved them: full, behind
        again = failing(3, T0 + 120)
        service.handle([again["shop/root"], again["shop/child_b"]])  # failing again, still behind
        assert notifications(store) == []
        clock.now = T0 + 180
        service.handle([specs()[2]])  # not full: caught up, the held states are current
        sent = notifications(store)
        assert sorted((r["receiver"], r["kind"]) for r in sent) == [("finance", "firing"), ("ops", "firing")]
        payload = json.loads(sent[0]["content"])
        assert {m["asset_key"] for m in payload["members"]} == {"shop/root", "shop/child_b"}
        assert payload["started_at"].startswith(from_timestamp(T0 + 120).isoformat()[:19])
    finally:
        store.close()


def test_the_first_notice_waits_for_the_rest_of_the_incident(tmp_path: Path) -> None:
    """The default `incident_wait_s`: the consequences of one failure arriving in batches milliseconds (here a
    second) apart are one first notice, sent when the wait is over."""
    settings = make_settings(tmp_path)
    settings = settings.model_copy(
        update={"alerts": settings.alerts.model_copy(update={"incident_wait_s": 2.0})}
    )
    store = open_store(settings)
    clock = Clock()
    service = AlertService(store, settings, clock=clock)
    try:
        service.handle(specs())
        events = failing(1, T0)
        service.handle([events["shop/root"]])
        clock.now += 1
        service.handle([events["shop/child_a"], events["shop/child_b"]])
        clock.now += 0.5
        assert service.tick() == 0 and notifications(store) == []
        clock.now += 0.5
        service.handle([events["shop/grandchild"]])  # at the end of the wait: in the first notice too
        sent = notifications(store)
        assert sorted(r["receiver"] for r in sent) == ["finance", "ops"]
        assert all(len(json.loads(r["content"])["members"]) == 7 for r in sent)
        clock.now += 10
        assert service.tick() == 0 and len(notifications(store)) == 2
    finally:
        store.close()


def test_a_waiting_incident_is_announced_by_the_clock(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings = settings.model_copy(
        update={"alerts": settings.alerts.model_copy(update={"incident_wait_s": 2.0})}
    )
    store = open_store(settings)
    clock = Clock()
    service = AlertService(store, settings, clock=clock)
    try:
        service.handle(specs())
        service.handle(list(failing(1, T0).values()))
        assert notifications(store) == []
        clock.now += 2
        assert service.tick() == 2  # one notice per receiver
        assert {json.loads(r["content"])["kind"] for r in notifications(store)} == {"firing"}
    finally:
        store.close()
