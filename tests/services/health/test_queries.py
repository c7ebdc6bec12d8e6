"""Read functions for the CLI, the sparkline, and the Dagster check payloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from libs.common.bus import Delivery
from libs.common.events import CheckResult, HealthStatus
from libs.common.settings import load_settings
from services.health.dagster_checks import check_payload, check_url
from services.health.queries import (
    history,
    known_assets,
    last_materializations,
    latest_health,
    series,
    sparkline,
    status_by_asset,
    statuses,
)
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store

T0 = 1_780_000_000.0


def test_sparkline_shapes() -> None:
    assert sparkline([]) == ""
    assert sparkline([5, 5, 5]) == "▄▄▄"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1, None, 3]) == "▁ █"
    assert sparkline(range(100), width=10) == sparkline(list(range(90, 100)))


@given(st.lists(st.one_of(st.none(), st.floats(min_value=-1e12, max_value=1e12)), max_size=200))
def test_sparkline_one_char_per_value(values: list[float | None]) -> None:
    line = sparkline(values)
    assert len(line) == (len(values) if any(v is not None for v in values) else 0)


def test_history_and_latest(tmp_path: Path, ev: Any) -> None:
    settings = load_settings(
        HealthWorkerSettings, dagster_home=str(tmp_path), stores={"data_dir": str(tmp_path)}
    )
    store = open_store(settings)
    engine = HealthService(store, settings, clock=lambda: T0 + 10_000)
    events = [ev.mat("a/b", T0 + i * 100, run_id=f"r{i}", rows=10 * (i + 1)) for i in range(5)]
    events.append(ev.run("r4", "SUCCESS", ["a/b"], start=T0 + 390, end=T0 + 400))
    engine.handle([Delivery("assets", f"{i}-0", e) for i, e in enumerate(events)])
    points = history(store, "a/b", 10)
    assert points[0].at >= points[-1].at and {p.kind for p in points} == {"materialization", "run"}
    rows, durations = series(points)
    assert rows == [10.0, 20.0, 30.0, 40.0, 50.0] and durations == [10.0]
    (health,) = latest_health(store)
    assert health.asset_key == "a/b" and health.status == "HEALTHY" and len(health.checks) == 6
    assert (
        last_materializations(store)
        == last_materializations(store, "a/b")
        == {"a/b": "2026-05-28T20:33:20+00:00"}
    )
    assert latest_health(store, "nope") == []
    engine.handle([Delivery("runs", "9-0", ev.run("bad", "FAILURE", ["c"], start=T0, end=T0 + 1))])
    assert [h.asset_key for h in latest_health(store, statuses={HealthStatus.FAILED})] == ["c"]
    assert [
        h.asset_key for h in latest_health(store, statuses={HealthStatus.FAILED, HealthStatus.HEALTHY})
    ] == ["c", "a/b"]
    assert latest_health(store, "a/b", statuses={HealthStatus.FAILED}) == []
    assert {k: v.status for k, v in statuses(store).items()} == {"a/b": "HEALTHY", "c": "FAILED"}
    assert status_by_asset(store) == {"a/b": "HEALTHY", "c": "FAILED"}
    assert sorted(known_assets(store)) == ["a/b", "c"]
    store.close()


def test_check_payloads() -> None:
    passed = CheckResult(
        check="freshness", outcome="passed", reason="fresh", values={"age_s": 3.0, "cols": ["a", "b"]}
    )
    body = check_payload(passed)
    assert body["passed"] is True and "severity" not in body and body["metadata"]["cols"] == "a, b"
    warn = check_payload(CheckResult(check="volume_anomaly", outcome="warn", reason="spike"))
    assert warn == {
        "check_name": "ams_volume_anomaly",  # our own name in Dagster
        "passed": False,
        "severity": "WARN",
        "metadata": {"reason": "spike", "outcome": "warn"},
    }
    assert check_url("http://d:3000/", "raw/my orders") == "http://d:3000/report_asset_check/raw/my%20orders"
