"""`asset-manager alerts ...` on a real monitor.db written by the alerts service's own code."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from asset_manager.settings import AppSettings
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
    new_event,
    utcnow,
)
from libs.common.settings import load_settings
from services.alerts.service import AlertService
from services.alerts.store import open_store
from services.alerts.testing import RecordingReceiver, Reply
from tests.asset_manager.conftest import Cli

SECRET = "whsec_" + base64.b64encode(b"cli-test-secret-0123456789abcdef").decode()


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    with RecordingReceiver() as srv:
        yield srv


@pytest.fixture
def alerting(cli: Cli, receiver: RecordingReceiver, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("CLI_WHSEC", SECRET)
    monkeypatch.setenv("AMS_ALERTS__INCIDENT_WAIT_S", "0")
    monkeypatch.setenv(
        "AMS_ALERTS__RECEIVERS",
        json.dumps([{"name": "hook", "url": receiver.url, "secret_env": "CLI_WHSEC", "timeout_s": 2}]),
    )
    return cli


def publish_health(
    asset: str,
    status: str,
    checks: list[tuple[str, str]],
    n: int,
    *,
    owners: tuple[str, ...] = ("ana@example.com",),
    downstream: tuple[str, ...] = (),
    values: dict[str, object] | None = None,
    code_location: str | None = None,
) -> None:
    """Apply a health event through the alerts service, as the worker would."""
    settings = load_settings(AppSettings)
    store = open_store(settings)
    try:
        data = HealthChangedData(
            asset_key=asset,
            status=status,  # type: ignore[arg-type]
            previous_status="UNKNOWN",
            checks=[
                CheckResult(check=c, outcome=o, reason=f"{c} is {o}", values=values or {"n": n})  # type: ignore[arg-type]
                for c, o in checks
            ],
            evaluated_at=utcnow(),
            owners=list(owners),
            downstream=list(downstream),
            code_location=code_location,
        )
        event = new_event(HealthChanged, "health.changed", identity=f"{asset}|{n}", data=data, source="test")
        AlertService(store, settings).handle([Delivery(HEALTH, f"{n}-0", event)])
    finally:
        store.close()


def listing(cli: Cli, *args: str) -> list[dict[str, object]]:
    code, out, err = cli.run("alerts", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_list_filters_and_empty_store(alerting: Cli) -> None:
    code, out, _ = alerting.run("alerts")
    assert (code, out.strip()) == (0, "no active alerts")
    publish_health("sales/orders", "FAILED", [("execution_status", "error"), ("volume_anomaly", "warn")], 1)
    publish_health("sales/customers", "DEGRADED", [("freshness", "warn")], 2)
    rows = listing(alerting)
    # most severe first, then newest first
    assert [(r["asset_key"], r["check"], r["severity"]) for r in rows] == [
        ("sales/orders", "execution_status", "critical"),
        ("sales/customers", "freshness", "warning"),
        ("sales/orders", "volume_anomaly", "warning"),
    ]
    assert rows[0]["owners"] == ["ana@example.com"] and rows[0]["values"] == {"n": 1}
    assert [r["check"] for r in listing(alerting, "--severity", "critical")] == ["execution_status"]
    assert [r["check"] for r in listing(alerting, "--asset", "sales/customers")] == ["freshness"]
    publish_health("sales/customers", "HEALTHY", [("freshness", "passed")], 3)
    assert len(listing(alerting)) == 2
    resolved = [r for r in listing(alerting, "--all") if r["status"] == "resolved"]
    assert [r["asset_key"] for r in resolved] == ["sales/customers"]
    code, out, _ = alerting.run("alerts", "--format", "csv")
    assert (
        out.splitlines()[0]
        == "id,incident,status,severity,asset_key,location,check,summary,owners,started_at,acked_by"
    )
    code, _, err = alerting.run("alerts", "--severity", "bogus")
    assert code == 2 and err.count("\n") == 1 and "unknown severity" in err


def test_listings_show_the_code_location(alerting: Cli) -> None:
    publish_health("fin/ledger", "FAILED", [("execution_status", "error")], 1, code_location="finance")
    publish_health("fin/report", "WARNING", [("freshness", "warn")], 2)  # no location known
    assert {r["asset_key"]: r["location"] for r in listing(alerting)} == {
        "fin/ledger": "finance",
        "fin/report": None,
    }
    code, out, _ = alerting.run("alerts", "--format", "csv")
    assert any(line.split(",")[4:6] == ["fin/ledger", "finance"] for line in out.splitlines())
    for fmt in ("table", "markdown"):
        code, out, err = alerting.run("alerts", "--format", fmt)
        assert code == 0 and "location" in out and "finance" in out, err
    ledger = next(r for r in listing(alerting) if r["asset_key"] == "fin/ledger")
    code, out, err = alerting.run("alerts", "show", str(ledger["id"]), "--format", "json")
    assert code == 0 and json.loads(out)["location"] == "finance", err
    (incident,) = [i for i in listing(alerting, "incidents") if i["root_asset"] == "fin/ledger"]
    assert incident["root_location"] == "finance"
    assert {m["asset_key"]: m["location"] for m in incident["alerts"]} == {"fin/ledger": "finance"}

    # An alert recorded before its location was (NULL): the asset's spec copy names it.
    settings = load_settings(AppSettings)
    store = open_store(settings)
    try:
        spec = AssetSpecData(key="fin/report", code_location="finance_reports")
        event = new_event(
            AssetChanged,
            "asset.registered",
            identity="fin/report:1",
            data=AssetChangeData(spec=spec, version=1),
            source="discovery",
        )
        AlertService(store, settings).handle([Delivery(ASSET_CHANGES, "9-0", event)])
        with store.write() as conn:
            conn.execute("UPDATE alerts SET code_location = NULL")
    finally:
        store.close()
    assert {r["asset_key"]: r["location"] for r in listing(alerting)} == {
        "fin/ledger": None,  # no spec copy of it either
        "fin/report": "finance_reports",
    }


def test_ack_silence_unsilence_and_history(alerting: Cli) -> None:
    publish_health("fin/revenue", "FAILED", [("execution_status", "error")], 1)
    (alert,) = listing(alerting)
    code, out, err = alerting.run("alerts", "ack", str(alert["id"]), "--by", "ann", "--reason", "rerunning")
    assert code == 0, err
    assert "acknowledged alert" in out
    assert listing(alerting)[0]["status"] == "acknowledged"
    code, _, err = alerting.run("alerts", "ack", str(alert["id"]))
    assert code == 1 and "already acknowledged by ann" in err
    code, _, err = alerting.run("alerts", "ack", "424242")
    assert code == 1 and err.strip() == "error: no alert with id 424242"

    code, out, err = alerting.run(
        "alerts",
        "silence",
        "--matcher",
        "check=execution_status",
        "-m",
        "owner=*@example.com",
        "--for",
        "2h",
        "--reason",
        "maintenance window",
        "--by",
        "bob",
    )
    assert code == 0, err
    silence_id = out.split()[1].rstrip(":")
    assert "covers 1 current alert" in out
    assert listing(alerting)[0]["status"] == "silenced"
    code, out, _ = alerting.run("alerts", "silences", "--format", "json")
    assert json.loads(out)[0]["id"] == silence_id
    code, out, err = alerting.run("alerts", "unsilence", silence_id, "--by", "bob")
    assert code == 0 and "1 alert(s) released" in out, err
    code, _, err = alerting.run("alerts", "unsilence", silence_id)
    assert code == 1 and "no longer active" in err

    code, out, _ = alerting.run("alerts", "show", str(alert["id"]), "--format", "json")
    history = json.loads(out)["history"]
    assert [(h["event"], h["actor"]) for h in history] == [
        ("firing", "check"),
        ("announced", "system"),
        ("grouped", "system"),
        ("incident_notice", "system"),
        ("acknowledged", "ann"),
        ("silenced", "bob"),
        ("unsilenced", "bob"),
    ]
    assert history[4]["reason"] == "rerunning" and history[5]["reason"] == "maintenance window"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["silence", "--for", "2h", "--reason", "x"], "give --asset KEY or at least one --matcher"),
        (["silence", "--asset", "a", "--for", "soon", "--reason", "x"], "invalid duration 'soon'"),
        (["silence", "-m", "colour=red", "--for", "1h", "--reason", "x"], "matcher key 'colour'"),
        (["silence", "--asset", "a", "--for", "1h"], "Missing option '--reason'"),
        (["ack", "not-a-number"], "Invalid value for 'alert_id'"),
        (["test-receiver", "nope"], "no receiver named 'nope' (receivers: hook)"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(alerting: Cli, args: list[str], message: str) -> None:
    code, out, err = alerting.run("alerts", *args)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_test_receiver_sends_a_signed_message(alerting: Cli, receiver: RecordingReceiver) -> None:
    code, out, err = alerting.run("alerts", "test-receiver", "hook")
    assert code == 0, err
    assert "accepted the signed test message (HTTP 200" in out
    (got,) = receiver.requests
    body = RecordingReceiver.verify(got, SECRET)
    assert body["type"] == "alert.test" and body["data"]["notification_id"] == got.webhook_id
    receiver.script = [Reply(status=500)]
    code, _, err = alerting.run("alerts", "test-receiver", "hook")
    assert code == 1 and "failed: HTTP 500" in err


def test_deliveries_lists_failed_notifications(alerting: Cli, receiver: RecordingReceiver) -> None:
    from services.alerts.sender import Sender

    publish_health("ops/load", "FAILED", [("execution_status", "error")], 1)
    settings = load_settings(AppSettings)
    store = open_store(settings)
    sender = Sender(store, settings)
    receiver.script = [Reply(status=410, body=b'{"error":"gone"}')]
    try:
        sender.run_until_idle()
    finally:
        sender.stop()
        store.close()
    code, out, _ = alerting.run("alerts", "deliveries", "--failed", "--format", "json")
    (row,) = json.loads(out)
    assert row["status"] == "dead" and row["receiver"] == "hook" and row["last_status"] == 410
    assert "not retried: HTTP 410" in row["last_error"]
    code, out, _ = alerting.run("alerts", "deliveries", "--format", "csv")
    assert code == 0
    assert len(out.splitlines()) == 2


@pytest.mark.parametrize(
    "duration", ["99999999999999999999w", "367d", "1e400", "nan", "inf", "0s", "-1h", "1" * 500]
)
def test_silence_durations_are_bounded(alerting: Cli, duration: str) -> None:
    publish_health("fin/revenue", "FAILED", [("execution_status", "error")], 1)
    code, out, err = alerting.run("alerts", "silence", "--asset", "fin/*", "--for", duration, "--reason", "x")
    assert code == 2 and err.count("\n") == 1 and "invalid duration" in err, (out, err)
    assert listing(alerting, "silences", "--all") == [] and listing(alerting)[0]["status"] == "firing"


def test_listings_survive_times_out_of_range_in_the_store(alerting: Cli) -> None:
    """Rows written before durations were bounded (or by hand) never crash a listing."""
    assert alerting.run("discover-assets")[0] == 0  # ownership-report counts the alerts of registered assets
    publish_health("raw_orders", "FAILED", [("execution_status", "error")], 1)
    store = open_store(load_settings(AppSettings))
    try:
        with store.write() as conn:
            conn.execute(
                "INSERT INTO silences (id, matchers, created_by, reason, created_at, ends_at) "
                "VALUES ('huge', '{\"asset\": \"raw_*\"}', 'x', 'x', 0, 1e300)"
            )
            conn.execute(
                "UPDATE alert_states SET state = json_set(state, '$.silenced_until', 1e300, "
                "'$.silence_id', 'huge')"
            )
            conn.execute("UPDATE alerts SET silence_id = 'huge', silenced_until = 1e300")
    finally:
        store.close()
    for args in (
        ["alerts"],
        ["alerts", "--all"],
        ["alerts", "silences"],
        ["alerts", "silences", "--all"],
        ["ownership-report"],
        ["alerts", "show", "1"],
    ):
        code, out, err = alerting.run(*args)
        assert code == 0, (args, out, err)
    assert listing(alerting)[0]["silenced_until"].startswith("9999-")


def test_incidents_listing_show_explains_grouping_and_reliability_report(alerting: Cli) -> None:
    code, out, _ = alerting.run("reliability-report")
    assert (code, out.startswith("no incidents since")) == (0, True)
    publish_health("shop/root", "FAILED", [("execution_status", "error")], 1, downstream=("shop/child",))
    publish_health(
        "shop/child",
        "WARNING",
        [("execution_status", "warn")],
        2,
        owners=("team:web",),
        values={"blocked_by": ["shop/root"]},
    )
    (incident,) = listing(alerting, "incidents")
    assert incident["root_asset"] == "shop/root" and incident["members"] == 2
    assert incident["affected"] == "shop/child" and incident["owners"] == ["ana@example.com", "team:web"]
    child = next(a for a in listing(alerting) if a["asset_key"] == "shop/child")
    assert child["incident"] == incident["id"]
    code, out, err = alerting.run("alerts", "show", str(child["id"]), "--format", "json")
    assert code == 0, err
    shown = json.loads(out)["incident"]
    why = {m["asset_key"]: m["why"] for m in shown["alerts"]}
    assert why["shop/child"] == "execution_status on shop/child names upstream shop/root as its cause"
    code, out, _ = alerting.run("alerts", "show", str(child["id"]), "--format", "markdown")
    assert "names upstream shop/root as its cause" in out and f"Incident #{incident['id']}" in out

    code, out, err = alerting.run("alerts", "ack", str(child["id"]), "--by", "ann")
    assert code == 0 and "and 1 other alert(s) of incident" in out, err
    publish_health("shop/root", "HEALTHY", [("execution_status", "passed")], 3)
    publish_health("shop/child", "HEALTHY", [("execution_status", "passed")], 4, owners=("team:web",))
    code, out, err = alerting.run("reliability-report", "--since", "1d", "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["totals"][0]["incidents"] == 1 and report["totals"][0]["resolved"] == 1
    assert report["totals"][0]["mtta_s"] is not None and report["totals"][0]["mttr_s"] is not None
    assert [r["team"] for r in report["team"]] == ["web"]
    assert {r["owner"] for r in report["owner"]} == {"ana@example.com", "team:web"}
    assert report["worst_assets"][0]["asset_key"] == "shop/root" and report["worst_assets"][0]["as_root"] == 1
    for fmt in ("csv", "markdown", "table"):
        code, out, err = alerting.run("reliability-report", "--format", fmt)
        assert code == 0 and "per team" in out, err
    code, _, err = alerting.run("reliability-report", "--since", "forever")
    assert code == 2 and err.count("\n") == 1 and "invalid duration" in err
