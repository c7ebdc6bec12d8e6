"""Receivers: render a notification for its receiver kind and POST it.

* `webhook`: generic JSON `{"type", "timestamp", "data"}` signed per Standard Webhooks (`webhook-id` is the
  notification id, stable across retries; `webhook-timestamp`; `webhook-signature` with the `whsec_...`
  secret from the environment variable named by `secret_env`).
* `slack`: Slack incoming webhook with Block Kit blocks.
* `teams`: Microsoft Teams workflow webhook carrying an Adaptive Card.
* `pagerduty`: PagerDuty Events API v2, trigger/resolve with the incident's key as `dedup_key` (an update
  re-triggers the same key: PagerDuty adds it to the open incident, no new page); the routing key comes from
  the environment variable named by `secret_env`.

A notification is about an incident (services/alerts/incidents.py): its root cause (the top-level asset,
check, reason and numbers) and every affected asset with its owner (`members`). Every message says what
broke, why, who owns it, the Dagster UI link and the downstream assets at risk. Every request carries the
`webhook-id` header, so any receiver can deduplicate. Slack and Teams incoming webhooks can neither thread
nor edit a message, so an update is a short new message naming the incident.
"""

from __future__ import annotations

import email.utils
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue
from standardwebhooks import Webhook

from libs.common.text import clip
from services.alerts.settings import AlertsWorkerSettings, WebhookReceiver

USER_AGENT = "dagster-asset-management-alerts/1"
PAGERDUTY_SEVERITIES = {"critical", "error", "warning", "info"}


class IncidentMember(BaseModel):
    """One affected asset's alert in an incident notice."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    alert_id: int | None = None
    asset_key: str
    check: str
    severity: str | None = None
    status: str = "firing"
    reason: str = ""
    owners: list[str] = Field(default_factory=list)
    code_location: str | None = None
    why: str = ""  # why it belongs to the incident


class AlertPayload(BaseModel):
    """The canonical content of one notification (stored in the outbox, rendered per receiver kind)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    notification_id: str
    kind: Literal["firing", "updated", "escalated", "repeat", "resolved", "merged", "test"]
    status: Literal["firing", "resolved"]
    alert_id: int | None = None
    fingerprint: str
    asset_key: str
    check: str
    severity: str | None = None
    title: str
    reason: str = ""
    values: dict[str, JsonValue] = Field(default_factory=dict)
    owners: list[str] = Field(default_factory=list)
    teams: list[str] = Field(default_factory=list)
    group: str | None = None
    # The Dagster code location that defines the asset (keys are unique per deployment, but a person needs
    # to know which team's code it is).
    code_location: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    downstream: list[str] = Field(default_factory=list)
    dagster_url: str | None = None
    started_at: AwareDatetime | None = None
    resolved_at: AwareDatetime | None = None
    acknowledged_by: str | None = None
    created_at: AwareDatetime
    # The incident this notice is about: the top-level fields describe its root cause.
    incident_id: int | None = None
    members: list[IncidentMember] = Field(default_factory=list)
    merged_into: int | None = None
    # What the root key names: "asset", or an automation object ("sensor", "schedule", "daemon", "publisher",
    # "job": an op job).
    object_kind: str = "asset"

    @property
    def dedup_key(self) -> str:
        """What a receiver deduplicates on: the incident, else the alert's fingerprint."""
        return f"incident-{self.incident_id}" if self.incident_id is not None else self.fingerprint

    @property
    def affected(self) -> list[IncidentMember]:
        """The members other than the root cause's own alert."""
        return [m for m in self.members if m.alert_id != self.alert_id]

    @property
    def affected_text(self) -> str:
        """Each affected asset with its check, status and owners, one per line (at most 20)."""
        lines = [
            f"{m.asset_key} ({m.check}, {m.status}; owner {', '.join(m.owners) or 'none'})"
            for m in self.affected[:20]
        ]
        more = len(self.affected) - 20
        return "\n".join(lines + ([f"and {more} more"] if more > 0 else [])) or "none"

    @property
    def why(self) -> str:
        """The reason with the numbers behind it."""
        numbers = ", ".join(f"{k}={_short(v)}" for k, v in self.values.items())
        if self.reason and numbers:
            return f"{self.reason} ({numbers})"
        return self.reason or numbers or "no details"

    @property
    def owner_text(self) -> str:
        return ", ".join(self.owners) or "no owner"

    @property
    def downstream_text(self) -> str:
        if not self.downstream:
            return "none"
        shown = ", ".join(self.downstream[:20])
        more = len(self.downstream) - 20
        return shown + (f" and {more} more" if more > 0 else "")


def title_for(
    kind: str,
    status: str,
    severity: str | None,
    asset_key: str,
    check: str,
    *,
    affected: int = 0,
    incident_id: int | None = None,
    merged_into: int | None = None,
) -> str:
    """One line: what broke (or recovered), and how many other assets the incident affects."""
    more = f" · {affected} more asset{'s' if affected != 1 else ''} affected" if affected else ""
    if kind == "merged":
        return f"MERGED incident #{incident_id} ({asset_key}) into incident #{merged_into}"
    if status == "resolved":
        recovered = f" · all {affected + 1} assets recovered" if affected else ""
        return f"RESOLVED {asset_key}: {check} passes again{recovered}"
    label = (severity or "error").upper()
    prefix = {
        "repeat": "STILL FIRING ",
        "escalated": "ESCALATED ",
        "updated": "UPDATE ",
        "test": "TEST ",
    }.get(kind, "")
    return f"{prefix}[{label}] {asset_key}: {check} failed{more}"


def dagster_asset_url(ui_url: str | None, asset_key: str) -> str | None:
    """The asset's page in the Dagster UI (`<ui>/assets/<key/path>`)."""
    if not ui_url:
        return None
    path = "/".join(quote(part, safe="") for part in asset_key.replace(".", "/").split("/") if part)
    return f"{ui_url.rstrip('/')}/assets/{path}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        # 305200.0 reads better as 305,200 than 3.052e+05; small values keep 4 significant digits
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return clip(text, 120)


def test_payload(settings: AlertsWorkerSettings) -> AlertPayload:
    """A recognisable test notification (`asset-manager alerts test-receiver`)."""
    now = datetime.now(UTC)
    return AlertPayload(
        notification_id=f"msg_test_{uuid.uuid4().hex}",
        kind="test",
        status="firing",
        fingerprint="test-receiver",
        asset_key="asset-manager/test",
        check="test_receiver",
        severity="info",
        title=title_for("test", "firing", "info", "asset-manager/test", "test_receiver"),
        reason="a test message sent by `asset-manager alerts test-receiver`; no action needed",
        values={"sent_at": now.isoformat(timespec="seconds")},
        owners=[],
        dagster_url=settings.alerts.dagster_ui_url,
        started_at=now,
        created_at=now,
    )


# -- rendering ---------------------------------------------------------------------------------------------


class MissingSecret(Exception):
    """The receiver names an environment variable that is not set."""


@dataclass(frozen=True)
class Request:
    url: str
    headers: dict[str, str]
    body: bytes


def render(receiver: WebhookReceiver, payload: AlertPayload, *, now: datetime | None = None) -> Request:
    """The HTTP request that delivers `payload` to `receiver` (signed at `now`)."""
    now = now or datetime.now(UTC)
    if receiver.kind == "slack":
        document = slack_message(payload)
    elif receiver.kind == "teams":
        document = teams_message(payload)
    elif receiver.kind == "pagerduty":
        document = pagerduty_event(payload, _required_secret(receiver))
    else:
        document = webhook_message(payload)
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": payload.notification_id,
        "webhook-timestamp": str(int(now.timestamp())),
    }
    if receiver.kind == "webhook" and receiver.secret_env:
        secret = _required_secret(receiver)
        headers["webhook-signature"] = Webhook(secret).sign(payload.notification_id, now, body)
    return Request(receiver.url, headers, body.encode("utf-8"))


def _required_secret(receiver: WebhookReceiver) -> str:
    secret = receiver.secret()
    if not secret:
        raise MissingSecret(f"environment variable {receiver.secret_env or '(secret_env unset)'} is not set")
    return secret


def webhook_message(payload: AlertPayload) -> dict[str, Any]:
    """Standard Webhooks payload shape: type, timestamp, data."""
    data = payload.model_dump(mode="json")
    data["why"] = payload.why
    return {"type": f"alert.{payload.kind}", "timestamp": data["created_at"], "data": data}


def slack_message(payload: AlertPayload) -> dict[str, Any]:
    """A Slack incoming-webhook message in Block Kit."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(payload.title, 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(f"*Why:* {payload.why}", 3000)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Asset*\n`{payload.asset_key}`"},
                {"type": "mrkdwn", "text": f"*Check*\n{payload.check}"},
                {"type": "mrkdwn", "text": f"*Severity*\n{payload.severity or '-'}"},
                {"type": "mrkdwn", "text": f"*Owner*\n{payload.owner_text}"},
                {"type": "mrkdwn", "text": f"*Code location*\n{payload.code_location or '-'}"},
            ],
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": clip(f"*Downstream at risk:* {payload.downstream_text}", 3000),
            },
        },
    ]
    if payload.affected:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": clip(f"*Affected:*\n{payload.affected_text}", 3000)},
            }
        )
    if payload.dagster_url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in Dagster"},
                        "url": payload.dagster_url,
                    }
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"{_incident_label(payload)}alert #{payload.alert_id} · "
                    f"{payload.fingerprint} · {payload.notification_id}",
                }
            ],
        }
    )
    return {"text": clip(f"{payload.title}: {payload.why}", 3000), "blocks": blocks}


def teams_message(payload: AlertPayload) -> dict[str, Any]:
    """A Teams workflow-webhook message carrying one Adaptive Card."""
    facts = [
        {"title": "Asset", "value": payload.asset_key},
        {"title": "Check", "value": payload.check},
        {"title": "Severity", "value": payload.severity or "-"},
        {"title": "Owner", "value": payload.owner_text},
        {"title": "Code location", "value": payload.code_location or "-"},
        {"title": "Downstream at risk", "value": payload.downstream_text},
        {"title": "Alert", "value": f"{_incident_label(payload)}#{payload.alert_id} ({payload.fingerprint})"},
    ]
    if payload.affected:
        facts.insert(6, {"title": "Affected", "value": payload.affected_text})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": payload.title,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": "Good" if payload.status == "resolved" else "Attention",
            },
            {"type": "TextBlock", "text": f"Why: {payload.why}", "wrap": True},
            {"type": "FactSet", "facts": facts},
        ],
    }
    if payload.dagster_url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in Dagster", "url": payload.dagster_url}]
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def _incident_label(payload: AlertPayload) -> str:
    return f"incident #{payload.incident_id} · " if payload.incident_id is not None else ""


def pagerduty_event(payload: AlertPayload, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event: trigger (firing, update) or resolve, deduplicated by the incident."""
    if payload.status == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": payload.dedup_key}
    severity = payload.severity if payload.severity in PAGERDUTY_SEVERITIES else "error"
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": payload.dedup_key,
        "payload": {
            "summary": clip(f"{payload.title}: {payload.why}", 1024),
            "source": payload.asset_key,
            "severity": severity,
            "component": payload.asset_key,
            "group": payload.group or "",
            "class": payload.check,
            "custom_details": {
                "why": payload.why,
                "values": payload.values,
                "owners": payload.owners,
                "code_location": payload.code_location,
                "downstream_at_risk": payload.downstream,
                "alert_id": payload.alert_id,
                "notification_id": payload.notification_id,
                "incident_id": payload.incident_id,
                "affected": [m.model_dump(mode="json") for m in payload.affected],
            },
        },
        "client": "dagster-asset-management",
    }
    if payload.dagster_url:
        event["links"] = [{"href": payload.dagster_url, "text": "Open in Dagster"}]
        event["client_url"] = payload.dagster_url
    return event


# -- sending -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt."""

    ok: bool
    status: int | None = None
    retryable: bool = True
    retry_after_s: float | None = None
    error: str | None = None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def deliver(client: httpx.Client, receiver: WebhookReceiver, payload: AlertPayload) -> Attempt:
    """POST `payload` to `receiver` once. 2xx is success; 5xx, 408, 429, timeouts and connection errors
    are retryable; other statuses (4xx, redirects) are not."""
    try:
        request = render(receiver, payload)
    except MissingSecret as exc:
        return Attempt(ok=False, retryable=True, error=str(exc))
    try:
        response = client.post(
            request.url, content=request.body, headers=request.headers, timeout=receiver.timeout_s
        )
    except httpx.TimeoutException:
        return Attempt(ok=False, retryable=True, error=f"timed out after {receiver.timeout_s:g}s")
    except httpx.HTTPError as exc:
        return Attempt(ok=False, retryable=True, error=f"{type(exc).__name__}: {clip(str(exc), 200)}")
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(ok=True, status=status)
    retryable = status >= 500 or status in (408, 429)
    text = clip(response.text.replace("\n", " "), 200)
    return Attempt(
        ok=False,
        status=status,
        retryable=retryable,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
        error=f"HTTP {status}" + (f": {text}" if text else ""),
    )
