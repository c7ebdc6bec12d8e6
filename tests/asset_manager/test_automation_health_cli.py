"""`automation-health` against a real health.db written by the health service from automation events."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime

import pytest

from asset_manager.settings import AppSettings
from libs.common.bus import Delivery
from libs.common.events import (
    AUTOMATION,
    AutomationTickData,
    AutomationTicked,
    DaemonHeartbeat,
    DaemonHeartbeatData,
    Event,
    PublisherHeartbeat,
    PublisherHeartbeatData,
    new_event,
)
from libs.common.settings import load_settings
from services.health.service import HealthService
from services.health.store import open_store
from tests.asset_manager.conftest import Cli


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def populate() -> None:
    """A failing sensor of `sales`, a healthy schedule of `finance`, a healthy daemon and publisher."""
    settings = load_settings(AppSettings)
    store = open_store(settings)
    engine = HealthService(store, settings)
    now = time.time()

    def tick(
        kind: str, name: str, location: str, status: str, tick_id: int, error: str | None = None
    ) -> Event:
        data = AutomationTickData(
            kind=kind,
            name=name,
            code_location=location,
            status=status,  # type: ignore[arg-type]
            tick_at=_dt(now - 5),
            tick_id=tick_id,
            error=error,
            owners=["team:sales"],
            cron_schedule="*/5 * * * *" if kind == "schedule" else None,
        )
        return new_event(
            AutomationTicked, "automation.tick", identity=f"{tick_id}:{status}", data=data, source="t"
        )

    events: list[Event] = [
        tick("sensor", "orders_sensor", "sales", "FAILURE", 1, "RuntimeError: source down"),
        tick("schedule", "daily_report", "finance", "SUCCESS", 2),
        new_event(
            DaemonHeartbeat,
            "automation.daemon_heartbeat",
            identity="SENSOR:1",
            source="t",
            data=DaemonHeartbeatData(daemon_type="SENSOR", last_heartbeat_at=_dt(now - 5)),
        ),
        new_event(
            PublisherHeartbeat,
            "automation.publisher_heartbeat",
            identity="sales:1",
            source="t",
            data=PublisherHeartbeatData(code_location="sales", tick_at=_dt(now - 5), interval_s=30),
        ),
    ]
    batch = [Delivery(AUTOMATION, f"{i + 1}-0", e) for i, e in enumerate(events)]
    engine.handle(batch)  # type: ignore[arg-type]
    store.close()


@pytest.fixture
def with_automation(cli: Cli) -> Cli:
    populate()
    return cli


def test_lists_objects_worst_first_with_reasons(with_automation: Cli) -> None:
    code, out, err = with_automation.run("automation-health")
    assert code == 0, err
    assert "sensor:sales/orders_sensor" in out and "FAILED" in out
    assert out.index("sensor:sales/orders_sensor") < out.index("schedule:finance/daily_report")


def test_filters_and_json(with_automation: Cli) -> None:
    code, out, err = with_automation.run("automation-health", "--status", "failed", "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert (
        row["object"] == "sensor:sales/orders_sensor"
        and row["kind"] == "sensor"
        and row["location"] == "sales"
    )
    assert row["failing_checks"] == ["tick_failures=error"] and "source down" in row["reasons"][0]
    assert row["owners"] == ["team:sales"] and {c["check"] for c in row["checks"]} == {
        "tick_failures",
        "stopped",
    }
    code, out, _ = with_automation.run("automation-health", "--kind", "daemon,publisher", "-f", "json")
    assert code == 0 and sorted(r["object"] for r in json.loads(out)) == ["daemon:SENSOR", "publisher:sales"]
    code, out, _ = with_automation.run(
        "automation-health", "--location", "finance", "--health", "HEALTHY", "-f", "json"
    )
    assert code == 0 and [r["object"] for r in json.loads(out)] == ["schedule:finance/daily_report"]


def test_csv_to_a_file_and_markdown(with_automation: Cli) -> None:
    target = with_automation.home / "automation.csv"
    code, _, err = with_automation.run("automation-health", "-k", "sensor", "-f", "csv", "-o", str(target))
    assert code == 0, err
    (row,) = list(csv.DictReader(io.StringIO(target.read_text())))
    assert row["object"] == "sensor:sales/orders_sensor" and "source down" in row["reasons"]
    code, out, _ = with_automation.run("automation-health", "-f", "markdown")
    assert code == 0 and "| sensor:sales/orders_sensor |" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "sensr"], "unknown --kind 'sensr' (did you mean sensor?)"),
        (["--status", "BROKEN"], "unknown --status 'BROKEN'"),
        (["--location", "sale"], "unknown code location 'sale' (did you mean sales?)"),
        (["--format", "yaml"], "yaml"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(with_automation: Cli, args: list[str], message: str) -> None:
    code, out, err = with_automation.run("automation-health", *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_health_db_from_before_automation_health_lists_nothing(cli: Cli) -> None:
    import sqlite3

    settings = load_settings(AppSettings)
    open_store(settings).close()
    db = sqlite3.connect(settings.data_dir / "health.db")
    db.execute("DROP TABLE automation_objects")  # as a health.db of migration 6 has none
    db.commit()
    db.close()
    code, out, err = cli.run("automation-health", "-f", "json")
    assert code == 0 and json.loads(out) == [] and "restart the health service" in err


def test_op_jobs_are_listed_by_kind(with_automation: Cli) -> None:
    from libs.common.events import RUNS, RunData, RunEvent

    settings = load_settings(AppSettings)
    store = open_store(settings)
    now = time.time()
    failed = new_event(
        RunEvent,
        "run.failed",
        identity="op1:FAILURE",
        source="t",
        occurred_at=_dt(now - 5),
        data=RunData(
            run_id="op000001",
            job_name="report_job",
            status="FAILURE",
            code_location="billing",
            ended_at=_dt(now - 5),
            error="SMTPError: relay refused",
            tags={"owner": "team:billing"},
        ),
    )
    HealthService(store, settings).handle([Delivery(RUNS, "1-0", failed)])  # type: ignore[list-item]
    store.close()
    code, out, err = with_automation.run("automation-health", "--kind", "job", "-f", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["object"] == "job:billing/report_job" and row["kind"] == "job" and row["location"] == "billing"
    assert row["status"] == "FAILED" and row["failing_checks"] == ["execution_status=error"]
    assert "relay refused" in row["reasons"][0] and row["owners"] == ["team:billing"]
    code, out, _ = with_automation.run("automation-health", "--location", "billing")
    assert code == 0 and "job:billing/report_job" in out and "sensor:sales" not in out
    code, _, err = with_automation.run("automation-health", "--kind", "jobs")
    assert code == 2 and "did you mean job?" in err


def _automation_stream() -> list[Event]:
    import redis

    from libs.common.events import parse_event

    settings = load_settings(AppSettings)
    client = redis.Redis.from_url(settings.redis.url)
    try:
        return [parse_event(f[b"event"]) for _, f in client.xrange(f"{settings.bus.prefix}:{AUTOMATION}")]
    finally:
        client.close()


def test_forget_retires_an_object_through_the_health_worker(with_automation: Cli) -> None:
    key = "sensor:sales/orders_sensor"
    code, out, err = with_automation.run("automation-health", "--forget", key, "--forget", key)
    assert code == 0, err
    assert out.count(f"{key}: retired") == 1
    (event,) = _automation_stream()
    assert event.type == "automation.removed" and event.data.object_key == key  # type: ignore[attr-defined]
    assert "forgotten by hand" in event.data.reason  # type: ignore[attr-defined]

    # What the health worker does with it (its consumer hands it over as this).
    settings = load_settings(AppSettings)
    store = open_store(settings)
    HealthService(store, settings).handle([Delivery(AUTOMATION, "1-0", event)])
    store.close()
    code, out, _ = with_automation.run("automation-health", "-k", "sensor", "-f", "json")
    (row,) = json.loads(out)
    assert row["status"] == "UNKNOWN" and row["failing_checks"] == []
    assert "forgotten by hand" in row["reasons"][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--forget", "sensor:sales/order_sensor"],
            "unknown automation object 'sensor:sales/order_sensor' (did",
        ),
        (
            ["--forget", "sensor:sales/orders_sensor", "--forget", "daemon:NOPE"],
            "unknown automation object 'daemon:NOPE'",
        ),
        (["--forget", "daemon:SENSOR", "--kind", "daemon"], "--forget lists nothing: it takes no --kind"),
        (["--forget", "daemon:SENSOR", "-f", "json"], "it takes no --format"),
    ],
)
def test_forget_checks_every_key_before_publishing(
    with_automation: Cli, args: list[str], message: str
) -> None:
    code, out, err = with_automation.run("automation-health", *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert _automation_stream() == []  # nothing published, not even the keys that were right
