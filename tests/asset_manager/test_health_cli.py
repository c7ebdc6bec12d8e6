"""`asset-health` against a real health.db written by the health service's own engine."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_manager.settings import AppSettings
from libs.common.bus import Delivery
from libs.common.events import (
    ASSET_CHANGES,
    ASSETS,
    RUNS,
    AssetChanged,
    AssetChangeData,
    AssetMaterialized,
    AssetSpecData,
    MaterializationData,
    RunData,
    RunEvent,
    new_event,
)
from libs.common.settings import load_settings
from services.health.service import HealthService
from services.health.store import open_store
from tests.asset_manager.conftest import Cli


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def populate() -> None:
    settings = load_settings(AppSettings)
    store = open_store(settings)
    engine = HealthService(store, settings)
    now = time.time()
    spec = AssetSpecData(key="raw/orders", code_location="finance", owners=["ana@example.com"])
    events: list[Delivery] = [
        Delivery(
            ASSET_CHANGES,
            "0-1",
            new_event(
                AssetChanged,
                "asset.registered",
                identity="raw/orders:1",
                data=AssetChangeData(spec=spec, version=1),
                source="discovery",
                occurred_at=_dt(now - 7200),
            ),
        )
    ]
    for i in range(3):
        run_id = f"ok-{i}"
        data = MaterializationData(asset_key="stg/orders", run_id=run_id, row_count=100 + i)
        events.append(
            Delivery(
                ASSETS,
                f"{i}-1",
                new_event(
                    AssetMaterialized,
                    "asset.materialized",
                    identity=run_id,
                    data=data,
                    source="t",
                    occurred_at=_dt(now - 3600 + i),
                ),
            )
        )
    failure = RunData(
        run_id="bad-1",
        job_name="j",
        status="FAILURE",
        asset_keys=["raw/orders"],
        started_at=_dt(now - 60),
        ended_at=_dt(now - 30),
        error="ConnectionError: source database unreachable",
    )
    events.append(
        Delivery(RUNS, "9-1", new_event(RunEvent, "run.failed", identity="bad-1", data=failure, source="t"))
    )
    engine.handle(events)
    store.close()


@pytest.fixture
def with_health(cli: Cli) -> Cli:
    populate()
    return cli


def test_lists_worst_first_with_reasons(with_health: Cli) -> None:
    code, out, err = with_health.run("asset-health")
    assert code == 0, err
    assert out.index("raw/orders") < out.index("stg/orders")
    assert "FAILED" in out and "HEALTHY" in out and "source database unreachable" in out


def test_status_filter_and_json(with_health: Cli) -> None:
    code, out, _ = with_health.run("asset-health", "--status", "failed,WARNING", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["asset_key"] for r in rows] == ["raw/orders"]
    assert rows[0]["failing_checks"] == ["execution_status=error"]
    assert {c["check"] for c in rows[0]["checks"]} >= {"execution_status", "volume_anomaly", "freshness"}


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "markdown"])
def test_every_format_shows_the_code_location(with_health: Cli, fmt: str) -> None:
    code, out, err = with_health.run("asset-health", "--format", fmt)
    assert code == 0, err
    if fmt == "json":
        assert {r["asset_key"]: r["location"] for r in json.loads(out)} == {
            "raw/orders": "finance",  # from its spec (discovery's event)
            "stg/orders": "",  # no spec on record
        }
    elif fmt == "csv":
        assert out.splitlines()[0].startswith("asset_key,location,status,")
        assert any(line.startswith("raw/orders,finance,FAILED,") for line in out.splitlines())
    else:
        assert "location" in out and "finance" in out
    code, out, _ = with_health.run("asset-health", "raw/orders")
    assert code == 0 and "raw/orders (code location finance): FAILED" in out


def test_location_filter(with_health: Cli) -> None:
    code, out, err = with_health.run("asset-health", "--location", "finance", "--format", "json")
    assert code == 0, err
    assert [r["asset_key"] for r in json.loads(out)] == ["raw/orders"]
    code, out, _ = with_health.run("asset-health", "-l", "finance", "--status", "HEALTHY", "--format", "json")
    assert code == 0 and json.loads(out) == []  # a known location with no asset of that status
    code, _, err = with_health.run("asset-health", "--location", "finanse")
    assert code == 2 and "unknown code location 'finanse' (did you mean finance?)" in err
    code, _, err = with_health.run("asset-health", "stg/orders", "--location", "finance")
    assert code == 2 and "asset 'stg/orders' is in code location (unknown), not finance" in err
    code, out, _ = with_health.run("asset-health", "raw/orders", "-l", "finance")
    assert code == 0 and "raw/orders (code location finance): FAILED" in out


def test_one_asset_shows_each_check(with_health: Cli, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    code, _, err = with_health.run("asset-health", "raw/orders", "--format", "csv", "--output", str(target))
    assert code == 0, err
    lines = target.read_text().splitlines()
    assert lines[0] == "check,outcome,reason,evaluated_at"
    assert any(line.startswith("execution_status,error,") for line in lines)
    assert len(lines) == 7


def test_bad_input_is_one_line_exit_2(with_health: Cli) -> None:
    code, _, err = with_health.run("asset-health", "--status", "FIALED")
    assert code == 2 and err.strip().count("\n") == 0
    assert "did you mean FAILED" in err
    code, _, err = with_health.run("asset-health", "raw/ordres")
    assert code == 2 and "did you mean raw/orders" in err


def test_no_store_yet(cli: Cli) -> None:
    code, out, err = cli.run("asset-health", "--format", "json")
    assert code == 0 and json.loads(out) == [] and "no health data yet" in err
