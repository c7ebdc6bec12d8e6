"""The catalog commands, run for real against real stores (SQLite files, a real Redis, a real Dagster
location)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import redis

from libs.common.events import AssetChanged, parse_event
from tests.asset_manager.conftest import Cli

FORMATS = ("table", "json", "csv", "markdown")


def asset_changes(cli: Cli) -> list[AssetChanged]:
    client = redis.Redis.from_url(cli.env["AMS_REDIS__URL"], protocol=2)
    try:
        entries = client.xrange(f"{cli.env['AMS_BUS__PREFIX']}:asset-changes")
    finally:
        client.close()
    events = [parse_event(fields[b"event"]) for _, fields in entries]
    assert all(isinstance(e, AssetChanged) for e in events)
    return events  # type: ignore[return-value]


def test_discover_test_mode_writes_nothing(cli: Cli) -> None:
    code, out, _ = cli.run("discover-assets", "--test", "--verbose")
    assert code == 0
    assert "would register 3" in out and "nothing was written" in out
    assert not cli.metadata_db.exists()
    assert asset_changes(cli) == []


def test_discover_registers_and_publishes_then_changes(cli: Cli) -> None:
    code, out, _ = cli.run("discover-assets")
    assert code == 0, out
    assert "registered 3" in out and "published 3 asset change events" in out
    assert {e.data.spec.key for e in asset_changes(cli)} == {"raw_orders", "stg_orders", "orders_report"}

    code, out, _ = cli.run("discover-assets")
    assert code == 0 and "registered 0, changed 0, returned 0, retired 0" in out
    assert len(asset_changes(cli)) == 3

    cli.write_location(description="Raw orders from the ERP.")
    code, out, _ = cli.run("discover-assets", "--test")
    assert "would register 0, change 1" in out
    code, out, _ = cli.run("discover-assets")
    assert "changed 1" in out and "raw_orders v2 (description)" in out
    last = asset_changes(cli)[-1]
    assert (
        last.type == "asset.changed" and last.data.changes["description"]["new"] == "Raw orders from the ERP."
    )


def test_discover_without_redis_still_registers(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMS_REDIS__URL", "redis://127.0.0.1:1/0")
    code, out, _ = cli.run("discover-assets")
    assert code == 0
    assert "Redis unreachable at redis://127.0.0.1:1/0" in out and "3 events wait" in out
    conn = sqlite3.connect(cli.metadata_db)
    assert conn.execute("SELECT COUNT(*) FROM assets").fetchone()[0] == 3
    assert conn.execute("SELECT COUNT(*) FROM event_outbox").fetchone()[0] == 3
    conn.close()


def test_discover_broken_location_lists_problem(cli: Cli) -> None:
    cli.write_location(broken=True)
    code, out, err = cli.run("discover-assets", "--verbose")
    assert code == 1
    assert "ImportError: no module named sqlx" in out
    assert err.strip().splitlines()[-1].startswith("error: discovery failed")


@pytest.mark.parametrize("fmt", FORMATS)
def test_list_assets_every_format(registered: Cli, fmt: str) -> None:
    code, out, _ = registered.run("list-assets", "--format", fmt)
    assert code == 0
    for key in ("raw_orders", "stg_orders", "orders_report"):
        assert key in out
    if fmt == "json":
        rows = json.loads(out)
        assert [r["key"] for r in rows] == ["orders_report", "raw_orders", "stg_orders"]
        assert rows[1]["owners"] == ["ana@example.com"] and rows[1]["health"] == "UNKNOWN"
        assert {r["key"]: r["upstream"] for r in rows} == {
            "orders_report": ["stg_orders"],
            "raw_orders": [],
            "stg_orders": ["raw_orders"],
        }
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert len(rows) == 3 and rows[0]["key"] == "orders_report"
    if fmt == "markdown":
        assert "| key | location | group |" in out


def test_list_assets_output_file(registered: Cli) -> None:
    code, _, err = registered.run("list-assets", "--format", "json", "--output", "assets.json")
    assert code == 0 and "wrote 3 rows" in err
    assert len(json.loads((registered.home / "assets.json").read_text())) == 3


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (["--group", "stg__loaders"], ["stg_orders"]),
        (["--owner", "ana@example.com"], ["raw_orders"]),
        (["--owner", "data"], ["stg_orders"]),
        (["--tag", "domain=sales"], ["raw_orders", "stg_orders"]),
        (["--tag", "domain=sales", "--tag", "source=ERP"], ["raw_orders"]),
        (["--kind", "pandas"], ["raw_orders", "stg_orders"]),
        (["--health", "unknown"], ["orders_report", "raw_orders", "stg_orders"]),
        (["--health", "FAILED"], []),
        (["--retired"], []),
        (["--job", "nightly_orders"], ["raw_orders", "stg_orders"]),
        (["--job", "nightly_orders", "--group", "stg__loaders"], ["stg_orders"]),
    ],
)
def test_list_assets_filters(registered: Cli, args: list[str], keys: list[str]) -> None:
    code, out, _ = registered.run("list-assets", "--format", "json", *args)
    assert code == 0
    assert [r["key"] for r in json.loads(out)] == keys


def test_retired_assets_listed_and_detailed(registered: Cli) -> None:
    registered.write_location(with_extra=True)
    assert registered.run("discover-assets")[0] == 0
    registered.write_location()
    code, out, _ = registered.run("discover-assets")
    assert code == 0 and "retired 1" in out
    code, out, _ = registered.run("list-assets", "--retired", "--format", "json")
    assert code == 0
    assert [r["key"] for r in json.loads(out)] == ["extra_asset"]
    code, out, _ = registered.run("asset-details", "extra_asset", "--format", "json")
    assert code == 0
    details = json.loads(out)
    assert details["status"] == "retired" and details["history"][0]["retired_at"] is not None


@pytest.mark.parametrize("fmt", FORMATS)
def test_asset_details_every_format(registered: Cli, fmt: str) -> None:
    code, out, _ = registered.run("asset-details", "stg_orders", "--format", fmt)
    assert code == 0
    assert "raw_orders" in out and "orders_report" in out  # lineage both ways
    if fmt == "json":
        doc = json.loads(out)
        assert doc["lineage"] == {
            "upstream": [{"key": "raw_orders", "depth": 1}],
            "downstream": [{"key": "orders_report", "depth": 1}],
        }
        assert [h["version"] for h in doc["history"]] == [1]
        assert doc["health"]["status"] == "UNKNOWN" and doc["open_alerts"] == []
        assert doc["job_names"] == ["nightly_orders"] and doc["repository"] == "__repository__"
    else:
        assert "version history" in out and "open alerts" in out
        assert "nightly_orders" in out and "__repository__" in out


def test_asset_details_lineage_any_depth(registered: Cli) -> None:
    code, out, _ = registered.run("asset-details", "orders_report", "--format", "json")
    assert code == 0
    assert json.loads(out)["lineage"]["upstream"] == [
        {"key": "stg_orders", "depth": 1},
        {"key": "raw_orders", "depth": 2},
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_inventory_every_format(registered: Cli, fmt: str) -> None:
    code, out, _ = registered.run("asset-inventory", "--format", fmt)
    assert code == 0
    if fmt == "json":
        rows = {(r["dimension"], r["value"]): r for r in json.loads(out)}
        assert rows[("domain", "sales")]["assets"] == 2
        assert rows[("kind", "pandas")]["assets"] == 2
        assert rows[("source", "ERP")]["assets"] == 1
        assert rows[("group", "transformed_data")]["unknown"] == 1
    else:
        assert "stg__ingestion" in out and "sales" in out


def test_inventory_by_one_dimension(registered: Cli) -> None:
    code, out, _ = registered.run("asset-inventory", "--by", "domain", "--format", "json")
    assert code == 0
    assert {r["dimension"] for r in json.loads(out)} == {"domain"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_ownership_report_every_format(registered: Cli, fmt: str) -> None:
    code, out, _ = registered.run("ownership-report", "--format", fmt)
    assert code == 0
    if fmt == "json":
        doc = json.loads(out)
        assert doc["kpis"]["assets"] == 3 and doc["kpis"]["owned_pct"] == 66.7
        assert doc["kpis"]["described_pct"] == 66.7
        assert doc["without_owner"] == ["orders_report"] and doc["without_description"] == ["orders_report"]
        assert {o["owner"]: o["assets"] for o in doc["owners"]} == {"ana@example.com": 1, "team:data": 1}
    else:
        assert "owned_pct" in out and "team:data" in out


def one_line_error(code: int, err: str, expected_code: int = 2) -> str:
    assert code == expected_code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["asset-details", "stg_order"], "unknown asset key 'stg_order' (did you mean 'stg_orders'?)"),
        (["asset-details", "x' OR '1'='1"], "unknown asset key"),
        (["asset-details", "raw_orders; DROP TABLE assets"], "unknown asset key"),
        (["asset-details", "raw\norders\x1b[31m"], "unknown asset key 'raw\\norders\\x1b[31m'"),
        (["list-assets", "--owner", "x' OR '1'='1"], "unknown owner"),
        (["list-assets", "--tag", "domain') OR 1=1 --=x"], "unknown tag"),
        (["list-assets", "--tag", "domain"], "bad --tag 'domain': expected key=value"),
        (
            ["list-assets", "--group", "stg__loader"],
            "unknown group 'stg__loader' (did you mean 'stg__loaders'?)",
        ),
        (["list-assets", "--owner", "nobody@example.com"], "unknown owner"),
        (["list-assets", "--kind", "pandsa"], "unknown kind 'pandsa' (did you mean 'pandas'?)"),
        (["list-assets", "--tag", "domian=sales"], "unknown tag 'domian' (did you mean 'domain'?)"),
        (["list-assets", "--health", "broken"], "unknown --health 'broken'"),
        (
            ["list-assets", "--job", "nightly_order"],
            "unknown job 'nightly_order' (did you mean 'nightly_orders'?)",
        ),
        (["list-assets", "--output", "../escape.json"], "'..' is not allowed"),
        (["list-assets", "--format", "yaml"], "yaml"),
        (["asset-inventory", "--by", "grup"], "unknown --by 'grup' (did you mean 'group'?)"),
    ],
)
def test_bad_input_is_one_line_exit_2(registered: Cli, args: list[str], message: str) -> None:
    code, _, err = registered.run(*args)
    assert message in one_line_error(code, err)
    conn = sqlite3.connect(registered.metadata_db)
    assert conn.execute("SELECT COUNT(*) FROM assets").fetchone()[0] == 3
    conn.close()


@pytest.mark.parametrize("command", ["list-assets", "asset-inventory", "ownership-report"])
def test_missing_store_is_one_line_exit_2(cli: Cli, command: str) -> None:
    code, _, err = cli.run(command)
    assert "metadata store not found" in one_line_error(code, err)


def test_unreadable_store_is_one_line_exit_2(cli: Cli) -> None:
    cli.metadata_db.write_bytes(b"this is not a database" * 100)
    code, _, err = cli.run("list-assets")
    assert "cannot read metadata store" in one_line_error(code, err)


def test_real_process_piped(registered: Cli) -> None:
    done = registered.run_process("list-assets", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("key,location,group,owners")
    assert "\x1b[" not in done.stdout + done.stderr  # no colours or progress bar when piped
    done = registered.run_process("asset-details", "raw_order")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown asset key 'raw_order' (did you mean 'raw_orders'?)"
    done = registered.run_process("discover-assets", "--test")
    assert done.returncode == 0 and "\x1b[" not in done.stdout + done.stderr


def test_health_and_alerts_from_their_own_services(registered: Cli) -> None:
    """Health and alerts come from health.db and monitor.db, written by those services' own handlers."""
    from asset_manager.settings import AppSettings
    from libs.common.bus import Delivery
    from libs.common.events import (
        AssetMaterializationFailed,
        AssetMaterialized,
        MaterializationData,
        MaterializationFailedData,
        new_event,
    )
    from libs.common.settings import load_settings
    from services.alerts.service import AlertService
    from services.alerts.store import open_store as open_monitor
    from services.health.service import HealthService
    from services.health.store import open_store as open_health

    settings = load_settings(AppSettings)
    changes = asset_changes(registered)
    ok = new_event(
        AssetMaterialized,
        "asset.materialized",
        identity="raw_orders|1",
        source="test",
        data=MaterializationData(asset_key="raw_orders", run_id="r1", row_count=10),
    )
    failed = new_event(
        AssetMaterializationFailed,
        "asset.materialization_failed",
        identity="stg_orders|1",
        source="test",
        data=MaterializationFailedData(asset_key="stg_orders", run_id="r2", error="boom"),
    )
    health_store = open_health(settings)
    HealthService(health_store, settings).handle(
        [Delivery("x", str(i), e) for i, e in enumerate([*changes, ok, failed])]  # type: ignore[list-item]
    )
    staged = [
        parse_event(r[0])
        for r in health_store.connection().execute("SELECT payload FROM event_outbox ORDER BY seq")
    ]
    health_store.close()
    monitor = open_monitor(settings)
    AlertService(monitor, settings).handle(
        [Delivery("x", str(i), e) for i, e in enumerate([*changes, *staged])]
    )  # type: ignore[list-item]
    monitor.close()

    code, out, _ = registered.run("list-assets", "--health", "failed", "--format", "json")
    assert code == 0 and [r["key"] for r in json.loads(out)] == ["stg_orders"]
    code, out, _ = registered.run("asset-details", "stg_orders", "--format", "json")
    doc = json.loads(out)
    assert doc["health"]["status"] == "FAILED"
    assert len(doc["open_alerts"]) >= 1 and doc["open_alerts"][0]["state"] == "firing"
    code, out, _ = registered.run("asset-details", "raw_orders", "--format", "json")
    assert json.loads(out)["health"]["last_materialization"] is not None
    code, out, _ = registered.run("ownership-report", "--format", "json")
    owners = {o["owner"]: o for o in json.loads(out)["owners"]}
    assert owners["team:data"]["unhealthy"] == 1 and owners["team:data"]["open_alerts"] >= 1
    code, out, _ = registered.run("asset-inventory", "--by", "group", "--format", "json")
    groups = {r["value"]: r for r in json.loads(out)}
    assert groups["stg__loaders"]["unhealthy"] == 1
    assert groups["stg__ingestion"]["last_materialization"] is not None


def test_discover_the_real_orchestrator_code_location(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMS_DISCOVERY__DEFINITIONS")  # the default: orchestrator.definitions:defs
    code, out, _ = cli.run("discover-assets", "--test", "--verbose")
    assert code == 0, out
    assert "orchestrator.assets.ingestion." in out and "orchestrator.assets.loaders." in out
    assert "0 problems" in out and "nothing was written" in out
    assert not cli.metadata_db.exists()


def test_concurrent_discoveries_register_once(cli: Cli) -> None:
    import subprocess

    from tests.asset_manager.conftest import EXE

    processes = [
        subprocess.Popen(
            [str(EXE), "discover-assets"],
            env=cli.env,
            cwd=cli.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    # The write lock serialises them: one registered everything, the others found nothing to do.
    assert sum("registered 3" in out for out, _ in outputs) == 1
    conn = sqlite3.connect(cli.metadata_db)
    assert conn.execute("SELECT COUNT(*), MAX(version) FROM asset_versions").fetchone() == (3, 1)
    conn.close()


def test_asset_details_charts_row_counts(registered: Cli) -> None:
    """The row-count history is drawn as a sparkline, so a person sees the drop."""
    from asset_manager.settings import AppSettings
    from libs.common.bus import Delivery
    from libs.common.events import AssetMaterialized, MaterializationData, new_event
    from libs.common.settings import load_settings
    from services.health.service import HealthService
    from services.health.store import open_store as open_health

    counts = [1000, 1010, 990, 1005, 995, 1002, 12]
    events = [
        new_event(
            AssetMaterialized,
            "asset.materialized",
            identity=f"raw_orders|chart|{i}",
            source="test",
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=i),
            data=MaterializationData(asset_key="raw_orders", run_id=f"r{i}", row_count=n),
        )
        for i, n in enumerate(counts)
    ]
    store = open_health(load_settings(AppSettings))
    HealthService(store, load_settings(AppSettings)).handle(
        [Delivery("assets", str(i), e) for i, e in enumerate(events)]
    )
    store.close()
    code, out, _ = registered.run("asset-details", "raw_orders", "--format", "json")
    assert code == 0
    (rows,) = [c for c in json.loads(out)["history_chart"] if c["metric"] == "row_count"]
    assert rows["points"] == len(counts) and rows["min"] == 12 and rows["last"] == 12
    assert len(rows["chart"]) == len(counts) and rows["chart"][-1] == "▁" and rows["chart"][0] != "▁"
    code, out, _ = registered.run("asset-details", "raw_orders")
    assert rows["chart"] in out
