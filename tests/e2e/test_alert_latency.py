"""bench/alert_latency.py's core with one cycle: a failing run in a real `asset-manager dev` reaches the
receiver as a verified firing notice, and the figures are computed from real times (no timing assertion)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.alert_latency import measure

pytestmark = pytest.mark.e2e


def test_one_failing_run_to_a_verified_notice(redis_url: str, bus_prefix: str, tmp_path: Path) -> None:
    figures = measure(1, redis_url=redis_url, workdir=tmp_path, timeout_s=240, bus_prefix=bus_prefix)
    assert figures["count"] == 1 and figures["sensor_interval_s"] >= 1
    # The notice came after the run ended, and after the sensor published the run's failure.
    assert figures["p50_s"] == figures["p95_s"] == figures["max_s"] > 0
    assert 0 < figures["sensor_p50_s"] <= figures["p50_s"]
    assert figures["workers_p50_s"] >= 0
    assert figures["target_met"] is (figures["p95_s"] <= figures["target_p95_s"])
