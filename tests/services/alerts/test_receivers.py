"""Each receiver kind against a real HTTP server on loopback: payload shape, signature, error handling."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from services.alerts.receivers import AlertPayload, deliver, parse_retry_after, render
from services.alerts.settings import WebhookReceiver
from services.alerts.testing import RecordingReceiver, Reply

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def server() -> Iterator[RecordingReceiver]:
    with RecordingReceiver() as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WHSEC", SECRET)
    monkeypatch.setenv("TEST_PD_KEY", "R0UTINGKEY0123456789012345678901")


def payload(status: str = "firing", kind: str = "firing") -> AlertPayload:
    return AlertPayload(
        notification_id="msg_abc123",
        kind=kind,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        alert_id=7,
        fingerprint="0123456789abcdef",
        asset_key="finance/revenue",
        check="volume_anomaly",
        severity="error",
        title="[ERROR] finance/revenue: volume_anomaly failed",
        reason="row count 12 is 4.1 MADs below the median 1,000",
        values={"row_count": 12, "median": 1000, "mad_score": -4.1},
        owners=["team:finance", "ann@example.com"],
        code_location="finance_pipelines",
        teams=["finance"],
        group="finance",
        downstream=["finance/report", "finance/dashboard"],
        dagster_url="http://localhost:3000/assets/finance/revenue",
        started_at=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        created_at=datetime(2026, 11, 27, 10, 0, 1, tzinfo=UTC),
    )


def receiver(kind: str, url: str, **kw: object) -> WebhookReceiver:
    return WebhookReceiver.model_validate({"name": kind, "kind": kind, "url": url, **kw})


def test_generic_webhook_is_signed_per_standard_webhooks(
    server: RecordingReceiver, client: httpx.Client
) -> None:
    attempt = deliver(client, receiver("webhook", server.url, secret_env="TEST_WHSEC"), payload())
    assert attempt.ok and attempt.status == 200
    (got,) = server.requests
    assert got.webhook_id == "msg_abc123"
    body = Webhook(SECRET).verify(got.body, got.headers)
    assert body["type"] == "alert.firing"
    data = body["data"]
    assert data["asset_key"] == "finance/revenue" and data["status"] == "firing"
    assert (
        data["why"]
        == "row count 12 is 4.1 MADs below the median 1,000 (row_count=12, median=1000, mad_score=-4.1)"
    )
    assert data["owners"] == ["team:finance", "ann@example.com"]
    assert data["dagster_url"] == "http://localhost:3000/assets/finance/revenue"
    assert data["downstream"] == ["finance/report", "finance/dashboard"]
    # a tampered body or another secret fails verification
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body.replace(b"finance", b"xfinance"), got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another-secret-another-secret!!").decode()).verify(
            got.body, got.headers
        )


def test_webhook_id_is_stable_across_attempts(server: RecordingReceiver, client: httpx.Client) -> None:
    recv = receiver("webhook", server.url, secret_env="TEST_WHSEC")
    first = render(recv, payload(), now=datetime.now(UTC) - timedelta(seconds=30))
    second = render(recv, payload())
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_abc123"
    assert first.body == second.body
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]  # signed per attempt


def test_missing_secret_is_a_retryable_failure(server: RecordingReceiver, client: httpx.Client) -> None:
    attempt = deliver(client, receiver("webhook", server.url, secret_env="NOT_SET_ANYWHERE"), payload())
    assert not attempt.ok and attempt.retryable and "NOT_SET_ANYWHERE" in (attempt.error or "")
    assert server.requests == []


def test_slack_block_kit(server: RecordingReceiver, client: httpx.Client) -> None:
    assert deliver(client, receiver("slack", server.url), payload()).ok
    body = json.loads(server.requests[0].body)
    assert "finance/revenue" in body["text"]
    types = [b["type"] for b in body["blocks"]]
    assert types[0] == "header" and "actions" in types
    text = json.dumps(body["blocks"])
    for needle in (
        "row_count=12",
        "team:finance",
        "finance/report",
        "http://localhost:3000/assets/finance/revenue",
        "*Code location*\\nfinance_pipelines",
    ):
        assert needle in text
    assert server.requests[0].webhook_id == "msg_abc123"


def test_teams_adaptive_card(server: RecordingReceiver, client: httpx.Client) -> None:
    assert deliver(client, receiver("teams", server.url), payload(status="resolved", kind="resolved")).ok
    body = json.loads(server.requests[0].body)
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["body"][0]["color"] == "Good"
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    assert facts["Owner"] == "team:finance, ann@example.com"
    assert facts["Code location"] == "finance_pipelines"
    assert facts["Downstream at risk"] == "finance/report, finance/dashboard"
    assert card["actions"][0]["url"] == "http://localhost:3000/assets/finance/revenue"


def test_pagerduty_trigger_and_resolve(server: RecordingReceiver, client: httpx.Client) -> None:
    recv = receiver("pagerduty", server.url, secret_env="TEST_PD_KEY")
    server.script = [Reply(status=202, body=b'{"status":"success","dedup_key":"0123456789abcdef"}')]
    assert deliver(client, recv, payload()).ok
    assert deliver(client, recv, payload(status="resolved", kind="resolved")).ok
    trigger, resolve = (json.loads(r.body) for r in server.requests)
    assert trigger["routing_key"] == os.environ["TEST_PD_KEY"]
    assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == "0123456789abcdef"
    assert trigger["payload"]["severity"] == "error" and trigger["payload"]["source"] == "finance/revenue"
    assert trigger["payload"]["custom_details"]["downstream_at_risk"] == [
        "finance/report",
        "finance/dashboard",
    ]
    assert trigger["links"][0]["href"].endswith("/assets/finance/revenue")
    assert resolve == {
        "routing_key": os.environ["TEST_PD_KEY"],
        "event_action": "resolve",
        "dedup_key": "0123456789abcdef",
    }


@pytest.mark.parametrize(
    ("reply", "retryable", "retry_after"),
    [
        (Reply(status=500), True, None),
        (Reply(status=503, headers={"Retry-After": "7"}), True, 7.0),
        (Reply(status=429, headers={"Retry-After": "2"}), True, 2.0),
        (Reply(status=408), True, None),
        (Reply(status=400, body=b'{"error":"bad"}'), False, None),
        (Reply(status=404), False, None),
        (Reply(status=301, headers={"Location": "http://elsewhere/"}), False, None),
    ],
)
def test_status_classification(
    server: RecordingReceiver, client: httpx.Client, reply: Reply, retryable: bool, retry_after: float | None
) -> None:
    server.script = [reply]
    attempt = deliver(client, receiver("webhook", server.url, secret_env="TEST_WHSEC"), payload())
    assert not attempt.ok
    assert attempt.status == reply.status and attempt.retryable is retryable
    assert attempt.retry_after_s == retry_after


def test_timeout_and_connection_refused(server: RecordingReceiver, client: httpx.Client) -> None:
    server.script = [Reply(delay_s=1.0)]
    attempt = deliver(client, receiver("webhook", server.url, timeout_s=0.2), payload())
    assert not attempt.ok and attempt.retryable and "timed out" in (attempt.error or "")
    url = server.url
    server.stop()
    attempt = deliver(client, receiver("webhook", url), payload())
    assert not attempt.ok and attempt.retryable and attempt.status is None


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Fri, 27 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Fri, 27 Nov 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
