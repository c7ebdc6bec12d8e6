"""One incident for one root cause, on real processes: a real Dagster instance runs the three-level lineage of
tests/e2e/lineage_location (root → sessions, orders → revenue, four owners), the real publishing sensor
publishes it to real Redis, discovery, health and alerts run as processes, and four real HTTP receivers
verify the Standard Webhooks signatures of what they get.

Routing: `ops` gets everything (the last route), `sales` the alerts of team:sales (`continue: true`, so ops
still gets them), `analysts` those of analyst@example.com (`continue: true`), `marketing` those of
team:marketing, who own nothing here. The root fails in a run that Dagster skips the rest of: each of the
three routed receivers gets exactly one firing notice naming the root as the cause and all four assets with
their owners, then nothing more while the failure stands; marketing gets nothing. Health never makes the
skipped assets FAILED. A good run resolves the incident: one resolved notice per receiver, same incident id.
Alerts run with their defaults: the incident's first notice waits `incident_wait_s` (2 s) for the rest of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from dagster import DagsterInstance, build_sensor_context

from asset_manager.settings import AppSettings
from libs.common.events import HEALTH, HealthChanged, parse_event
from libs.common.testing import ServiceProcess, read_store, wait_for, worker_env
from orchestrator.sensors import build_event_sensor
from orchestrator.settings import get_settings
from services.alerts.testing import Received, RecordingReceiver
from tests.e2e.lineage_location.definitions import OWNERS, defs

pytestmark = pytest.mark.e2e
WORKERS = ("discovery", "health", "alerts")
ROOT, SESSIONS, ORDERS, REVENUE = "lineage/root", "lineage/sessions", "lineage/orders", "lineage/revenue"
BELOW = (SESSIONS, ORDERS, REVENUE)
ROUTED = ("ops", "sales", "analysts")
RECEIVERS = (*ROUTED, "marketing")
# Each receiver its own secret: a notice signed for another receiver would not verify.
SECRETS = {name: "whsec_" + f"incident-lineage-e2e-{name}".encode().hex()[:40] for name in RECEIVERS}
ROUTES = [
    {"teams": ["sales"], "receivers": ["sales"], "continue": True},
    {"owners": ["analyst@example.com"], "receivers": ["analysts"], "continue": True},
    {"teams": ["marketing"], "receivers": ["marketing"]},
    {"assets": ["*"], "receivers": ["ops"]},
]
# After the last expected notice, how long nothing more may arrive (a window, not a timing assertion).
QUIET_S = 4.0


@dataclass
class System:
    home: Path
    env: dict[str, str]
    workers: dict[str, ServiceProcess]
    receivers: dict[str, RecordingReceiver]
    log: Path

    def notices(self, name: str) -> list[dict[str, Any]]:
        """What receiver `name` accepted, each body checked against that receiver's secret."""
        return [self.verified(name, r) for r in self.receivers[name].accepted()]

    @staticmethod
    def verified(name: str, received: Received) -> dict[str, Any]:
        payload: dict[str, Any] = RecordingReceiver.verify(received, SECRETS[name])
        assert received.webhook_id == payload["data"]["notification_id"]
        return payload["data"]  # type: ignore[no-any-return]

    def diagnose(self) -> str:
        told = {n: [(d["kind"], d["asset_key"]) for d in self.notices(n)] for n in RECEIVERS}
        tail = self.log.read_text()[-4000:] if self.log.exists() else "no log"
        return f"{tail}\nnotices: {told}"

    def cli(self, *args: str) -> Any:
        """`asset-manager <args> --format json` as a process, on the workers' configuration."""
        done = subprocess.run(
            [sys.executable, "-m", "asset_manager.cli", *args, "--format", "json"],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def system(settings: AppSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    """Four receivers and the three workers as processes, configured through the environment."""
    receivers = {name: RecordingReceiver().start() for name in RECEIVERS}
    env = worker_env(
        settings.dagster_home,
        settings.redis.url,
        settings.bus.prefix,
        AMS_LOGGING__FILE=str(tmp_path / "system.log"),
        AMS_LOGGING__FORMAT="json",
        AMS_DISCOVERY__RESCAN_AT_START="false",  # the catalog arrives through the sensor's snapshot
        AMS_ALERTS__FLAP_WINDOW_S="0",
        AMS_ALERTS__RECEIVERS=json.dumps(
            [
                {"name": name, "kind": "webhook", "url": r.url, "secret_env": f"E2E_SECRET_{name.upper()}"}
                for name, r in receivers.items()
            ]
        ),
        AMS_ALERTS__ROUTES=json.dumps(ROUTES),
        **{f"E2E_SECRET_{name.upper()}": secret for name, secret in SECRETS.items()},
    )
    workers: dict[str, ServiceProcess] = {}
    for key in ("DAGSTER_HOME", "AMS_REDIS__URL", "AMS_BUS__PREFIX"):  # the sensor runs in this process
        monkeypatch.setenv(key, env[key])
    get_settings.cache_clear()
    try:
        for name in WORKERS:
            workers[name] = ServiceProcess.service(name, env, tmp_path / f"{name}.out")
        wait_for(lambda: all(w.answers() and w.ready() for w in workers.values()), 60, "three workers ready")
        yield System(settings.dagster_home, env, workers, receivers, tmp_path / "system.log")
    finally:
        codes = {name: w.stop() for name, w in workers.items()}
        for r in receivers.values():
            r.stop()
        get_settings.cache_clear()
        assert codes == dict.fromkeys(WORKERS, 0), f"workers did not stop cleanly: {codes}"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """Dagster's in-memory storage: its SQL run and event-log storage on one in-memory SQLite database. On
    SQLite files (a file per run) every event written cost tens of milliseconds here."""
    with DagsterInstance.ephemeral() as dagster_instance:
        yield dagster_instance


def run_and_publish(
    settings: AppSettings, instance: DagsterInstance, cursor: str | None
) -> tuple[bool, str | None]:
    """One run of the four assets, then one tick of the real sensor against the lineage location."""
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    context = build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def())
    build_event_sensor(settings=settings).evaluate_tick(context)
    return result.success, context.cursor


def quiet(system: System, expected: dict[str, int]) -> None:
    """Wait until each receiver holds `expected` notices, then a short window in which nothing more comes."""

    def counts() -> dict[str, int]:
        return {n: len(system.receivers[n].accepted()) for n in RECEIVERS}

    wait_for(
        lambda: all(counts()[n] >= expected.get(n, 0) for n in RECEIVERS),
        60,
        f"notices {expected}",
        system.diagnose,
    )
    end = time.monotonic() + QUIET_S
    while time.monotonic() < end:
        assert counts() == {n: expected.get(n, 0) for n in RECEIVERS}, system.diagnose()
        time.sleep(0.2)
    # Nothing was refused or retried either: every request was accepted once.
    assert all(len(r.requests) == len(r.accepted()) for r in system.receivers.values()), system.diagnose()


def healthy(health_db: Path) -> set[str]:
    return {
        r[0] for r in read_store(health_db, "SELECT asset_key FROM asset_health WHERE status = 'HEALTHY'")
    }


def test_a_failing_root_is_one_incident_per_receiver_and_its_recovery_resolves_it_once(
    settings: AppSettings,
    system: System,
    instance: DagsterInstance,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    health_db, monitor_db = system.home / "health.db", system.home / "monitor.db"
    everyone = sorted({o for owners in OWNERS.values() for o in owners})

    # 1. A healthy deployment: everything materialized, registered, known to alerts with its owners.
    succeeded, cursor = run_and_publish(settings, instance, None)
    assert succeeded
    wait_for(
        lambda: len(read_store(monitor_db, "SELECT 1 FROM assets WHERE asset_key LIKE 'lineage/%'")) == 4,
        60,
        "four assets in monitor.db",
        system.diagnose,
    )
    wait_for(lambda: healthy(health_db) == set(OWNERS), 60, "four HEALTHY assets", system.diagnose)
    quiet(system, {})

    # 2. The root fails; Dagster skips the three assets below it.
    monkeypatch.setenv("LINEAGE_FAIL_ROOT", "1")
    succeeded, cursor = run_and_publish(settings, instance, cursor)
    assert not succeeded
    quiet(system, dict.fromkeys(ROUTED, 1))
    firing = {name: system.notices(name)[0] for name in ROUTED}
    incident_id = firing["ops"]["incident_id"]
    assert incident_id is not None
    for name, data in firing.items():
        assert (data["kind"], data["status"], data["incident_id"]) == ("firing", "firing", incident_id), name
        # The top-level fields are the root cause.
        assert (data["asset_key"], data["check"], data["severity"]) == (ROOT, "execution_status", "critical")
        assert "the event source refused the connection" in data["reason"], data["reason"]
        assert sorted(data["owners"]) == everyone, name
        # Every affected asset is a member with its own owners; the skipped ones are warnings that name the
        # root as their cause.
        members: dict[str, list[dict[str, Any]]] = {}
        for member in data["members"]:
            members.setdefault(member["asset_key"], []).append(member)
        assert set(members) == set(OWNERS), name
        for asset, alerts in members.items():
            for m in alerts:
                assert (sorted(m["owners"]), m["status"]) == (sorted(OWNERS[asset]), "firing"), m
        assert {m["check"] for m in members[ROOT]} == {"execution_status"}
        for asset in BELOW:
            assert {m["severity"] for m in members[asset]} == {"warning"}, members[asset]
            assert all(f"{ROOT} as its cause" in m["why"] for m in members[asset]), members[asset]
    # `alerts incidents` shows that one open incident with every member.
    (listed,) = system.cli("alerts", "incidents")
    assert (listed["id"], listed["status"], listed["root_asset"]) == (incident_id, "open", ROOT)
    assert listed["members"] >= 4 and {a["asset_key"] for a in listed["alerts"]} == set(OWNERS)
    assert listed["owners"] == everyone

    # 3. Fixed: the root succeeds and the assets below it are materialized again.
    monkeypatch.delenv("LINEAGE_FAIL_ROOT")
    succeeded, cursor = run_and_publish(settings, instance, cursor)
    assert succeeded
    quiet(system, dict.fromkeys(ROUTED, 2))
    for name in ROUTED:
        resolved = system.notices(name)[1]
        assert (resolved["kind"], resolved["status"]) == ("resolved", "resolved"), name
        assert (resolved["incident_id"], resolved["asset_key"]) == (incident_id, ROOT), name
    wait_for(lambda: healthy(health_db) == set(OWNERS), 60, "four HEALTHY assets again", system.diagnose)
    (listed,) = system.cli("alerts", "incidents", "--all")
    assert (listed["id"], listed["status"]) == (incident_id, "resolved")
    assert listed["members"] == len(firing["ops"]["members"])
    assert not read_store(monitor_db, "SELECT 1 FROM alerts WHERE status = 'firing'")

    # Health never judged a skipped asset FAILED: not in a transition it recorded, nor in what it published.
    transitions = read_store(health_db, "SELECT asset_key, status, previous_status FROM health_transitions")
    below = [dict(r) for r in transitions if r["asset_key"] in BELOW]
    seen = {(r["asset_key"], r["status"]) for r in below}
    assert seen >= {(a, s) for a in BELOW for s in ("WARNING", "HEALTHY")}
    assert [r for r in below if "FAILED" in (r["status"], r["previous_status"])] == []
    assert (ROOT, "FAILED") in {(r["asset_key"], r["status"]) for r in transitions}
    stream = f"{settings.bus.prefix}:{HEALTH}"
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrange(stream)  # type: ignore[assignment]
    events = [parse_event(fields[b"event"]) for _, fields in entries]
    published = [(e.data.asset_key, e.data.status) for e in events if isinstance(e, HealthChanged)]
    assert len(published) == len(events)
    assert set(published) >= {(a, s) for a in BELOW for s in ("WARNING", "HEALTHY")}
    assert [(a, s) for a, s in published if a in BELOW and s == "FAILED"] == []
    # Every notice was delivered once.
    ids = [r.webhook_id for name in RECEIVERS for r in system.receivers[name].accepted()]
    assert len(ids) == len(set(ids)) == 2 * len(ROUTED)
