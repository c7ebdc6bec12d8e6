"""Routing: which receivers get an alert, from `alerts.routes` in app_config.yaml. Pure functions.

Routes are tried in order. A route matches when every criterion it sets matches (lists: any entry, as a
shell-style glob; tags: every tag). The first matching route wins unless it sets `continue: true`. When no
route matches, `default_receivers` get the alert (every receiver when that is unset). A matched route whose
mute window is open at that moment sends nothing; its receivers are reported as muted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

from services.alerts.settings import AlertRoute, AlertsSettings, MuteWindow

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class AlertLabels:
    """What routing and silences match on."""

    asset_key: str
    check: str
    severity: str
    owners: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    group: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def as_matchable(self) -> dict[str, list[str]]:
        """Label name → values, as silences' `k=v` matchers see them (`tag.<name>` for tags)."""
        values: dict[str, list[str]] = {
            "asset": [self.asset_key],
            "check": [self.check],
            "severity": [self.severity],
            "owner": list(self.owners),
            "team": list(self.teams),
            "group": [self.group] if self.group else [],
        }
        for key, value in self.tags.items():
            values[f"tag.{key}"] = [value]
        return values


@dataclass(frozen=True)
class RouteDecision:
    receivers: tuple[str, ...]
    muted: tuple[str, ...] = ()
    matched_routes: tuple[int, ...] = ()


def teams_of(owners: Sequence[str], tags: Mapping[str, str]) -> tuple[str, ...]:
    """Teams from Dagster owners (`team:<name>`) and a `team` tag."""
    teams = [o.split(":", 1)[1] for o in owners if o.startswith("team:")]
    if tags.get("team"):
        teams.append(tags["team"])
    return tuple(dict.fromkeys(teams))


def _any(patterns: Sequence[str], values: Sequence[str]) -> bool:
    return any(fnmatchcase(v, p) for p in patterns for v in values)


def route_matches(route: AlertRoute, labels: AlertLabels) -> bool:
    """True when every criterion the route sets matches the labels."""
    if route.assets and not _any(route.assets, [labels.asset_key]):
        return False
    if route.owners and not _any(route.owners, labels.owners):
        return False
    if route.teams and not _any(route.teams, labels.teams):
        return False
    if route.groups and not _any(route.groups, [labels.group] if labels.group else []):
        return False
    if route.severities and labels.severity not in route.severities:
        return False
    if route.checks and not _any(route.checks, [labels.check]):
        return False
    return all(k in labels.tags and fnmatchcase(labels.tags[k], v) for k, v in route.tags.items())


def window_open(window: MuteWindow, at: datetime) -> bool:
    """True when `at` (timezone-aware) falls inside the mute window."""
    local = at.astimezone(ZoneInfo(window.timezone))
    day = _DAYS[local.weekday()]
    previous_day = _DAYS[(local - timedelta(days=1)).weekday()]
    start = time.fromisoformat(window.start)
    end = time.fromisoformat(window.end)
    now = local.time().replace(tzinfo=None)
    if start == end:
        return day in window.days
    if start < end:
        return day in window.days and start <= now < end
    # Wraps past midnight: the evening belongs to `day`, the early morning to the day before.
    return (day in window.days and now >= start) or (previous_day in window.days and now < end)


def route(labels: AlertLabels, settings: AlertsSettings, at: datetime) -> RouteDecision:
    """The receivers that get an alert with `labels` at time `at`, and the receivers muted right now."""
    windows = {w.name: w for w in settings.mute_windows}
    receivers: list[str] = []
    muted: list[str] = []
    matched: list[int] = []
    for index, candidate in enumerate(settings.routes):
        if not route_matches(candidate, labels):
            continue
        matched.append(index)
        if any(window_open(windows[name], at) for name in candidate.mute_windows):
            muted.extend(candidate.receivers)
        else:
            receivers.extend(candidate.receivers)
        if not candidate.continue_:
            break
    if not matched:
        default = settings.default_receivers
        receivers = list(default) if default is not None else [r.name for r in settings.receivers]
    chosen = tuple(dict.fromkeys(receivers))
    return RouteDecision(
        receivers=chosen,
        muted=tuple(r for r in dict.fromkeys(muted) if r not in chosen),
        matched_routes=tuple(matched),
    )


def silence_matches(matchers: Mapping[str, str], labels: AlertLabels) -> bool:
    """True when every `k=v` matcher (v a glob) matches some value of label k."""
    values = labels.as_matchable()
    return all(_any([pattern], values.get(key, [])) for key, pattern in matchers.items())


SILENCE_KEYS = ("asset", "check", "severity", "owner", "team", "group")


def parse_matcher(text: str) -> tuple[str, str]:
    """`k=v` → (k, v); k is a label name (asset, check, severity, owner, team, group, tag.<name>)."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise ValueError(f"matcher {text!r} is not of the form key=value")
    if key not in SILENCE_KEYS and not (key.startswith("tag.") and len(key) > 4):
        raise ValueError(f"matcher key {key!r} is not one of {', '.join(SILENCE_KEYS)} or tag.<name>")
    return key, value
