"""The alerts worker's settings: the `alerts:` section (receivers, routes, mute windows, timing)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from libs.common.settings import Section, Settings, TimeZoneName


class WebhookReceiver(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["webhook", "slack", "teams", "pagerduty"] = "webhook"
    url: str
    # Name of the environment variable holding the signing secret (`whsec_...`) or routing key.
    secret_env: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    # Also tell this receiver when an alert resolves (Alertmanager's send_resolved).
    send_resolved: bool = True

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("webhook URL must be http:// or https://")
        return value

    @model_validator(mode="after")
    def _pagerduty_needs_key(self) -> WebhookReceiver:
        if self.kind == "pagerduty" and not self.secret_env:
            raise ValueError("a pagerduty receiver needs secret_env (the variable holding its routing key)")
        return self

    def secret(self) -> str | None:
        """The receiver's secret from the environment, or None when unset."""
        return os.environ.get(self.secret_env) if self.secret_env else None


AlertSeverity = Literal["critical", "error", "warning", "info"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_ALL_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MuteWindow(Section):
    """A recurring time of day during which the routes naming it send nothing (e.g. nights, weekends)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    days: list[Weekday] = Field(default_factory=lambda: list(_ALL_DAYS))
    start: str = Field(default="00:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    # An end before the start wraps past midnight (22:00-07:00); equal start and end mute the whole day.
    end: str = Field(default="00:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    timezone: TimeZoneName = "UTC"


class AlertRoute(Section):
    """Alerts matching every given criterion go to `receivers`; lists match when any entry matches
    (shell-style globs), `tags` when every tag matches. Routes are tried in order; the first match wins
    unless it sets `continue: true`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    receivers: list[str] = Field(min_length=1)
    assets: list[str] = Field(default_factory=list)
    owners: list[str] = Field(default_factory=list)
    teams: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    severities: list[AlertSeverity] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list)
    mute_windows: list[str] = Field(default_factory=list)
    continue_: bool = Field(default=False, alias="continue")


class AlertsSettings(Section):
    receivers: list[WebhookReceiver] = Field(default_factory=list)
    dagster_ui_url: str | None = None
    retention_days: int = Field(default=180, ge=1)
    routes: list[AlertRoute] = Field(default_factory=list)
    # Receivers of alerts no route matched; unset means every configured receiver.
    default_receivers: list[str] | None = None
    mute_windows: list[MuteWindow] = Field(default_factory=list)
    # Delay before a new alert's first notice (a check that recovers within it notifies nothing). 0 keeps
    # the failure-to-webhook latency low.
    group_wait_s: float = Field(default=0.0, ge=0)
    # After a resolved notice, the same alert firing again is announced only once this has passed and it is
    # still firing: a flapping check sends at most one firing/resolved pair per window.
    flap_window_s: float = Field(default=300.0, ge=0)
    # Alerts on the same asset or along its lineage that start within this long of each other belong to one
    # incident (an alert that names its upstream cause joins that upstream's incident whenever it starts).
    incident_window_s: float = Field(default=3600.0, ge=0)
    # A still-firing, unacknowledged, unsilenced alert is announced again after this long.
    repeat_interval_s: float = Field(default=4 * 3600.0, gt=0)
    # An incident's first notice waits this long after the incident opened, so that it names every asset
    # one failure affects: the consequences of one failed run reach the worker in batches milliseconds
    # apart (the sensor's, then health's publishes), and 0 would page the root alone and then update it.
    incident_wait_s: float = Field(default=2.0, ge=0)
    # How often clock-driven transitions (waits, repeats, silence expiry) are evaluated.
    tick_interval_s: float = Field(default=0.5, gt=0)
    # Delivery: exponential backoff with jitter between attempts, a notification older than max_age_s is dead.
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_max_delay_s: float = Field(default=1800.0, gt=0)
    retry_after_max_s: float = Field(default=3600.0, gt=0)
    max_age_s: float = Field(default=24 * 3600.0, gt=0)
    sender_concurrency: int = Field(default=8, ge=1, le=64)
    # Watching the watcher (services/alerts/watch.py): the automation stream is read directly every
    # publisher_watch_interval_s, and `publisher:<code location>` / `heartbeat` fires when a publisher seen
    # before has written no heartbeat for publisher_heartbeat_intervals times its interval (at least
    # publisher_heartbeat_min_s); it resolves with the next heartbeat. 0 intervals turns the watch off.
    publisher_heartbeat_intervals: float = Field(default=3.0, ge=0)
    publisher_heartbeat_min_s: float = Field(default=60.0, gt=0)
    publisher_watch_interval_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="after")
    def _unique_receivers(self) -> AlertsSettings:
        names = [r.name for r in self.receivers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate receiver names: {', '.join(dupes)}")
        windows = {w.name for w in self.mute_windows}
        for i, route in enumerate(self.routes):
            unknown = sorted(set(route.receivers) - set(names))
            if unknown:
                raise ValueError(f"routes[{i}] names unknown receivers: {', '.join(unknown)}")
            missing = sorted(set(route.mute_windows) - windows)
            if missing:
                raise ValueError(f"routes[{i}] names unknown mute windows: {', '.join(missing)}")
        unknown_default = sorted(set(self.default_receivers or []) - set(names))
        if unknown_default:
            raise ValueError(f"default_receivers names unknown receivers: {', '.join(unknown_default)}")
        return self


class AlertsWorkerSettings(Settings):
    """Everything the alerts worker reads."""

    alerts: AlertsSettings = AlertsSettings()

    def receiver(self, name: str) -> WebhookReceiver:
        """The configured receiver called `name`; KeyError if none."""
        for receiver in self.alerts.receivers:
            if receiver.name == name:
                return receiver
        raise KeyError(name)

    def secrets(self) -> Iterator[str]:
        """The shared secrets, the receivers' secrets, and the URLs of Slack and Teams receivers (the URL
        itself is the credential)."""
        yield from super().secrets()
        for receiver in self.alerts.receivers:
            secret = receiver.secret()
            if secret:
                yield secret
            if receiver.kind in ("slack", "teams"):
                yield receiver.url

    def missing_secrets(self) -> list[str]:
        """Receivers whose `secret_env` names a variable that is unset or empty."""
        problems = super().missing_secrets()
        for i, receiver in enumerate(self.alerts.receivers):
            if receiver.secret_env and not receiver.secret():
                problems.append(
                    f"alerts.receivers.{i}.secret_env: environment variable "
                    f"{receiver.secret_env} (receiver {receiver.name!r}'s secret) is not set"
                )
        return problems
