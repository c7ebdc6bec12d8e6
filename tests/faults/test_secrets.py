"""Secrets never leave the process: not in the log file (DEBUG level), not on /metrics, /healthz or /readyz.

The alerts worker runs against a password-protected Redis, signs a webhook with its secret, and fails one
delivery to a URL carrying credentials; then every byte it exposed is searched for the secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path

from asset_manager.settings import AppSettings
from libs.common.bus import Bus, connect
from libs.common.events import HEALTH, CheckResult, HealthChanged, HealthChangedData, new_event, utcnow
from libs.common.redis_server import LocalRedis, free_port
from libs.common.settings import load_settings
from libs.common.testing import ServiceProcess, worker_env
from services.alerts.testing import RecordingReceiver

ROOT = Path(__file__).resolve().parents[2]
REDIS_PASSWORD = "redis-pw-Zq81xK"
WEBHOOK_SECRET = "whsec_" + "c2VjcmV0cy1uZXZlci1sZWF2ZS10aGUtcHJvY2Vzcw=="
URL_PASSWORD = "url-pw-Hh27Lm"


def test_secrets_are_not_logged_or_exposed(tmp_path: Path) -> None:
    server = LocalRedis(directory=tmp_path / "redis", password=REDIS_PASSWORD).start()
    receiver = RecordingReceiver().start()
    log = tmp_path / "system.log"
    refused = f"http://user:{URL_PASSWORD}@127.0.0.1:{free_port()}/hook"  # nothing listens: delivery fails
    env = worker_env(
        tmp_path / "home",
        server.url,
        "secrets",
        AMS_REDIS__PASSWORD=REDIS_PASSWORD,
        AMS_LOGGING__FILE=str(log),
        AMS_LOGGING__LEVEL="DEBUG",
        AMS_ALERTS__RECEIVERS=json.dumps(
            [
                {"name": "signed", "url": receiver.url, "secret_env": "SECRETS_WHSEC"},
                {"name": "down", "url": refused},
            ]
        ),
        AMS_ALERTS__RETRY_BASE_S="0.1",
        SECRETS_WHSEC=WEBHOOK_SECRET,
    )
    worker = ServiceProcess.service("alerts", env, tmp_path / "alerts.out")
    try:
        settings = load_settings(
            AppSettings,
            redis={"url": server.url, "password": REDIS_PASSWORD},
            bus={"prefix": "secrets"},
            logging={"file": None},
        )
        bus = Bus(connect(settings.redis), settings.bus)
        failed = HealthChangedData(
            asset_key="secret/asset",
            status="FAILED",
            previous_status="HEALTHY",
            evaluated_at=utcnow(),
            checks=[CheckResult(check="execution_status", outcome="error", reason="run failed")],
        )
        bus.publish_many(
            HEALTH,
            [
                new_event(
                    HealthChanged, "health.changed", identity="secret-asset:1", source="test", data=failed
                )
            ],
        )
        receiver.wait_for(lambda requests: len(requests) >= 1, timeout_s=30)
        deadline = time.monotonic() + 30
        while not (log.exists() and "notification_retry" in log.read_text()):
            assert time.monotonic() < deadline, "the failing delivery was never logged"
            time.sleep(0.2)
        exposed = "".join(
            r.text for r in map(worker.get, ("/metrics", "/healthz", "/readyz")) if r is not None
        )
    finally:
        worker.stop()
        output = worker.output(tail=10**7)
        receiver.stop()
        server.stop()
    assert "ams_worker_ready" in exposed and '"checks"' in exposed  # the surface was really read
    logged = log.read_text() + output
    assert (
        "notification_delivered" in logged and "notification_retry" in logged
    )  # the log describes the work...
    for secret in (REDIS_PASSWORD, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), URL_PASSWORD):
        assert secret not in logged, f"secret in the logs: {secret[:6]}…"  # ...without any secret
        assert secret not in exposed, f"secret on the service surface: {secret[:6]}…"
