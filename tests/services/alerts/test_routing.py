"""Routing rules, mute windows and silence matchers (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.settings import ConfigError, load_settings
from services.alerts.routing import AlertLabels, parse_matcher, route, silence_matches, teams_of, window_open
from services.alerts.settings import AlertsSettings, AlertsWorkerSettings, MuteWindow


def cfg(**data: object) -> AlertsSettings:
    base = {
        "receivers": [
            {"name": "default", "url": "http://127.0.0.1:1/d"},
            {"name": "pager", "kind": "pagerduty", "url": "http://127.0.0.1:1/p", "secret_env": "PD_KEY"},
            {"name": "finance-slack", "kind": "slack", "url": "http://127.0.0.1:1/s"},
            {"name": "audit", "url": "http://127.0.0.1:1/a"},
        ]
    }
    return AlertsSettings.model_validate({**base, **data})


def labels(**kw: object) -> AlertLabels:
    base: dict[str, object] = {"asset_key": "finance/revenue", "check": "volume_anomaly", "severity": "error"}
    base.update(kw)
    return AlertLabels(**base)  # type: ignore[arg-type]


NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday


def test_no_routes_sends_to_every_receiver_or_the_defaults() -> None:
    assert route(labels(), cfg(), NOON).receivers == ("default", "pager", "finance-slack", "audit")
    assert route(labels(), cfg(default_receivers=["default"]), NOON).receivers == ("default",)
    assert route(labels(), cfg(default_receivers=[]), NOON).receivers == ()


def test_first_match_wins_unless_continue() -> None:
    settings = cfg(
        default_receivers=["default"],
        routes=[
            {"receivers": ["audit"], "continue": True},
            {"receivers": ["pager"], "severities": ["critical"]},
            {"receivers": ["finance-slack"], "teams": ["finance"]},
            {"receivers": ["default"], "groups": ["fin*"]},
        ],
    )
    finance = labels(owners=("team:finance", "ann@example.com"), teams=("finance",), group="finance")
    assert route(finance, settings, NOON).receivers == ("audit", "finance-slack")
    assert route(labels(severity="critical", teams=("finance",)), settings, NOON).receivers == (
        "audit",
        "pager",
    )
    # only the continue route matched: it counts as matched, so no default
    assert route(labels(), settings, NOON).receivers == ("audit",)


def test_every_criterion_must_match() -> None:
    settings = cfg(
        default_receivers=["default"],
        routes=[
            {
                "receivers": ["pager"],
                "assets": ["finance/*"],
                "owners": ["*@example.com"],
                "tags": {"tier": "gold"},
                "checks": ["volume_*", "execution_status"],
                "severities": ["error", "critical"],
            }
        ],
    )
    good = labels(owners=("ann@example.com",), tags={"tier": "gold", "x": "y"})
    assert route(good, settings, NOON).receivers == ("pager",)
    for bad in (
        labels(owners=("ann@example.com",), tags={"tier": "silver"}),
        labels(owners=("team:ops",), tags={"tier": "gold"}),
        labels(owners=("ann@example.com",), tags={"tier": "gold"}, check="freshness"),
        labels(owners=("ann@example.com",), tags={"tier": "gold"}, severity="warning"),
        labels(owners=("ann@example.com",), tags={"tier": "gold"}, asset_key="sales/orders"),
    ):
        assert route(bad, settings, NOON).receivers == ("default",)


def test_mute_windows() -> None:
    settings = cfg(
        mute_windows=[{"name": "nights", "start": "22:00", "end": "07:00", "timezone": "Europe/Paris"}],
        routes=[
            {"receivers": ["finance-slack"], "mute_windows": ["nights"], "continue": True},
            {"receivers": ["pager"]},
        ],
    )
    night = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)  # 00:30 in Paris
    decision = route(labels(), settings, night)
    assert decision.receivers == ("pager",) and decision.muted == ("finance-slack",)
    assert route(labels(), settings, NOON).receivers == ("finance-slack", "pager")


def test_window_open_edges() -> None:
    weekend = MuteWindow(name="weekend", days=["sat", "sun"])
    assert window_open(weekend, datetime(2026, 11, 28, 3, 0, tzinfo=UTC))  # Saturday
    assert not window_open(weekend, datetime(2026, 11, 27, 23, 59, tzinfo=UTC))  # Friday
    late = MuteWindow(name="late", days=["fri"], start="22:00", end="02:00")
    assert window_open(late, datetime(2026, 11, 27, 22, 0, tzinfo=UTC))
    assert window_open(late, datetime(2026, 11, 28, 1, 59, tzinfo=UTC))  # Saturday morning, Friday's window
    assert not window_open(late, datetime(2026, 11, 28, 2, 0, tzinfo=UTC))
    assert not window_open(late, datetime(2026, 11, 28, 23, 0, tzinfo=UTC))
    day = MuteWindow(name="lunch", start="12:00", end="13:00")
    assert window_open(day, NOON) and not window_open(day, NOON.replace(hour=13))


@given(
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 23),
    st.integers(0, 59),
    st.datetimes(timezones=st.just(UTC)),
)
def test_wrapping_window_is_the_complement_of_its_inverse(
    h1: int, m1: int, h2: int, m2: int, at: datetime
) -> None:
    start, end = f"{h1:02d}:{m1:02d}", f"{h2:02d}:{m2:02d}"
    if start == end:
        return
    window = MuteWindow(name="w", start=start, end=end)
    inverse = MuteWindow(name="i", start=end, end=start)
    assert window_open(window, at) != window_open(inverse, at)


def test_silence_matchers() -> None:
    alert = labels(owners=("team:finance",), teams=("finance",), group="finance", tags={"tier": "gold"})
    assert silence_matches({"asset": "finance/*"}, alert)
    assert silence_matches({"asset": "finance/revenue", "check": "volume_anomaly"}, alert)
    assert silence_matches({"team": "finance", "tag.tier": "gold"}, alert)
    assert not silence_matches({"asset": "finance/revenue", "check": "freshness"}, alert)
    assert not silence_matches({"tag.pii": "*"}, alert)
    assert parse_matcher("asset=a/b") == ("asset", "a/b")
    assert parse_matcher("tag.tier = gold") == ("tag.tier", "gold")
    for bad in ("asset", "=x", "colour=red", "tag.=x"):
        with pytest.raises(ValueError):
            parse_matcher(bad)


def test_teams_from_owners_and_tags() -> None:
    assert teams_of(["team:data", "ann@example.com"], {"team": "finance"}) == ("data", "finance")


def test_settings_reject_unknown_receivers_and_windows() -> None:
    with pytest.raises(ConfigError, match="unknown receivers: nope"):
        load_settings(AlertsWorkerSettings, alerts={"routes": [{"receivers": ["nope"]}]})
    with pytest.raises(ConfigError, match="unknown mute windows"):
        load_settings(
            AlertsWorkerSettings,
            alerts={
                "receivers": [{"name": "a", "url": "http://x"}],
                "routes": [{"receivers": ["a"], "mute_windows": ["n"]}],
            },
        )
    with pytest.raises(ConfigError, match="unknown IANA time zone"):
        load_settings(AlertsWorkerSettings, alerts={"mute_windows": [{"name": "n", "timezone": "Mars/Base"}]})


def test_pagerduty_receiver_needs_a_routing_key_variable() -> None:
    with pytest.raises(ConfigError, match="pagerduty receiver needs secret_env"):
        load_settings(
            AlertsWorkerSettings,
            alerts={
                "receivers": [
                    {"name": "pd", "kind": "pagerduty", "url": "https://events.pagerduty.com/v2/enqueue"}
                ]
            },
        )


def test_webhook_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match=r"alerts\.receivers\.0\.url"):
        load_settings(
            AlertsWorkerSettings, alerts={"receivers": [{"name": "ops", "url": "file:///etc/passwd"}]}
        )
