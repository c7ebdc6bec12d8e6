"""The whole event path on real parts: Dagster materializations → sensor → Redis → discovery, health and
alerts as processes → SQLite stores → a signed webhook, firing and then resolved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, build_sensor_context
from standardwebhooks.webhooks import Webhook

from asset_manager.settings import AppSettings
from libs.common.testing import ServiceProcess, read_store, wait_for, worker_env
from orchestrator.settings import get_settings
from services.alerts.testing import RecordingReceiver

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + "c2VjcmV0LWZvci1lMmUtdGVzdHMtb25seQ=="
WORKERS = ("discovery", "health", "alerts")


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    with RecordingReceiver() as server:
        yield server


@pytest.fixture
def system(
    settings: AppSettings, receiver: RecordingReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """The three workers as processes, configured through the environment like a deployment."""
    env = worker_env(
        settings.dagster_home,
        settings.redis.url,
        settings.bus.prefix,
        AMS_LOGGING__FILE=str(tmp_path / "system.log"),
        AMS_LOGGING__FORMAT="json",
        AMS_DISCOVERY__RESCAN_AT_START="false",  # the catalog must arrive through the sensor's snapshot
        AMS_ALERTS__FLAP_WINDOW_S="0",
        AMS_ALERTS__DAGSTER_UI_URL="http://dagster.example:3000",
        AMS_ALERTS__RECEIVERS=json.dumps(
            [{"name": "ops", "kind": "webhook", "url": receiver.url, "secret_env": "E2E_WEBHOOK_SECRET"}]
        ),
        E2E_WEBHOOK_SECRET=SECRET,
    )
    workers = {name: ServiceProcess.service(name, env, tmp_path / f"{name}.out") for name in WORKERS}
    # The sensor and the demo assets run in this process, on the same settings.
    for key in ("DAGSTER_HOME", "AMS_REDIS__URL", "AMS_BUS__PREFIX"):
        monkeypatch.setenv(key, env[key])
    get_settings.cache_clear()

    try:
        wait_for(lambda: all(w.answers() and w.ready() for w in workers.values()), 60, "three workers ready")
        yield {"workers": workers, "log": tmp_path / "system.log"}
    finally:
        codes = {name: w.stop() for name, w in workers.items()}
        get_settings.cache_clear()
        assert codes == {n: 0 for n in WORKERS}, f"workers did not stop cleanly: {codes}"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """Dagster's in-memory storage: its SQL run and event-log storage on one in-memory SQLite database. On
    SQLite files (a file per run) every event written cost tens of milliseconds here."""
    with DagsterInstance.ephemeral() as dagster_instance:
        yield dagster_instance


def tick(settings: AppSettings, instance: DagsterInstance, cursor: str | None) -> str | None:
    """Evaluate the real publishing sensor once against the real code location."""
    from orchestrator.definitions import defs
    from orchestrator.sensors import build_event_sensor

    sensor = build_event_sensor(settings=settings)
    context = build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def())
    sensor.evaluate_tick(context)
    return context.cursor


def webhooks(receiver: RecordingReceiver, status: str, asset: str) -> list[dict[str, Any]]:
    found = []
    for request in receiver.accepted():
        body = json.loads(request.body)
        data = body.get("data", {})
        if data.get("status") == status and data.get("asset_key") == asset:
            found.append({"body": body, "request": request})
    return found


def test_failure_travels_to_a_signed_webhook_and_recovery_resolves_it(
    settings: AppSettings,
    system: dict[str, Any],
    instance: DagsterInstance,
    receiver: RecordingReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.definitions import defs

    home = settings.dagster_home
    metadata_db, health_db, monitor_db = home / "metadata.db", home / "health.db", home / "monitor.db"
    job = defs.resolve_implicit_global_asset_job_def()

    # 1. A healthy run of everything, then raw_orders fails (its downstream cannot run).
    assert job.execute_in_process(instance=instance).success
    cursor = tick(settings, instance, None)
    monkeypatch.setenv("DEMO_FAIL_ASSETS", "raw_orders")
    assert not job.execute_in_process(instance=instance, raise_on_error=False).success
    cursor = tick(settings, instance, cursor)

    def diagnose() -> str:
        return (
            (system["log"].read_text()[-3000:] if system["log"].exists() else "no log")
            + "\nwebhooks: "
            + str([json.loads(r.body).get("data", {}).get("status") for r in receiver.requests])
        )

    # 2. Discovery registered the code location's assets from the sensor's snapshot.
    keys = wait_for(
        lambda: (
            {r["key"] for r in read_store(metadata_db, "SELECT key FROM assets")}
            >= {"raw_orders", "stg_orders"}
        ),
        30,
        "assets in metadata.db",
        diagnose,
    )
    assert keys
    # 3. Health recorded the failure and turned the asset FAILED.
    wait_for(
        lambda: read_store(
            health_db, "SELECT 1 FROM executions WHERE asset_key = ? AND status = 'FAILURE'", "raw_orders"
        ),
        30,
        "failed execution in health.db",
        diagnose,
    )
    wait_for(
        lambda: read_store(
            health_db, "SELECT 1 FROM asset_health WHERE asset_key = ? AND status = 'FAILED'", "raw_orders"
        ),
        30,
        "raw_orders FAILED in health.db",
        diagnose,
    )
    # 4. Alerts opened an alert and delivered a signed firing webhook.
    wait_for(
        lambda: read_store(
            monitor_db, "SELECT 1 FROM alerts WHERE asset_key = ? AND resolved_at IS NULL", "raw_orders"
        ),
        30,
        "open alert in monitor.db",
        diagnose,
    )
    firing = wait_for(lambda: webhooks(receiver, "firing", "raw_orders"), 30, "firing webhook", diagnose)[0]
    request = firing["request"]
    verified = Webhook(SECRET).verify(request.body, request.headers)
    assert verified["data"]["asset_key"] == "raw_orders"
    assert request.headers["webhook-id"] == firing["body"]["data"]["notification_id"]
    assert firing["body"]["data"]["dagster_url"].startswith("http://dagster.example:3000/")
    assert firing["body"]["data"]["reason"]
    with pytest.raises(Exception):  # noqa: B017 - any verification error: a wrong secret must not verify
        Webhook("whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==").verify(request.body, request.headers)

    # 5. Fixed: the rerun succeeds, health recovers and a signed resolved webhook arrives for that alert.
    monkeypatch.delenv("DEMO_FAIL_ASSETS")
    assert job.execute_in_process(instance=instance).success
    tick(settings, instance, cursor)
    resolved = wait_for(
        lambda: webhooks(receiver, "resolved", "raw_orders"), 30, "resolved webhook", diagnose
    )[0]
    Webhook(SECRET).verify(resolved["request"].body, resolved["request"].headers)
    assert resolved["body"]["data"]["fingerprint"] == firing["body"]["data"]["fingerprint"]
    wait_for(
        lambda: read_store(
            health_db, "SELECT 1 FROM asset_health WHERE asset_key = ? AND status != 'FAILED'", "raw_orders"
        ),
        30,
        "raw_orders recovered in health.db",
        diagnose,
    )
    assert not read_store(
        monitor_db,
        "SELECT 1 FROM alerts WHERE asset_key = ? AND check_name = ? AND resolved_at IS NULL",
        "raw_orders",
        firing["body"]["data"]["check"],
    )
    # Every notice was delivered once: webhook-ids are unique.
    ids = [r.webhook_id for r in receiver.accepted()]
    assert len(ids) == len(set(ids))
