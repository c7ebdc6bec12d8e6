from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from libs.common.events import (
    AssetMaterialized,
    Column,
    HealthChanged,
    HealthChangedData,
    HealthStatus,
    MaterializationData,
    RunData,
    RunEvent,
    event_id,
    new_event,
    parse_event,
)


def _run_event(run_id: str = "r1", status: str = "FAILURE") -> RunEvent:
    return new_event(
        RunEvent,
        "run.failed",
        identity=f"{run_id}:{status}",
        data=RunData(run_id=run_id, job_name="job", status=status, asset_keys=["a/b"], error="boom"),  # type: ignore[arg-type]
        source="test",
    )


def test_ids_are_deterministic_per_identity() -> None:
    assert _run_event().id == _run_event().id
    assert _run_event("r2").id != _run_event().id
    assert event_id("run.failed", "x") != event_id("run.succeeded", "x")


def test_round_trip_through_stream_fields() -> None:
    event = new_event(
        AssetMaterialized,
        "asset.materialized",
        identity="42",
        data=MaterializationData(
            asset_key="raw/orders",
            run_id="r",
            storage_id=42,
            row_count=10,
            column_schema=[Column(name="id", type="int")],
            metadata={"x": [1, 2]},
        ),
        source="test",
    )
    fields = event.to_fields()
    assert fields["type"] == "asset.materialized"
    parsed = parse_event(fields["event"])
    assert parsed == event
    assert isinstance(parsed, AssetMaterialized)


def test_unknown_fields_tolerated() -> None:
    raw = json.loads(_run_event().model_dump_json())
    raw["future"] = 1
    raw["data"]["also_future"] = {"a": 1}
    assert parse_event(json.dumps(raw)).id == _run_event().id


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update(type="no.such.type"),
        lambda e: e.update(schema_version=2),
        lambda e: e["data"].update(status="MAYBE"),
        lambda e: e.pop("id"),
        lambda e: e.update(occurred_at="2026-01-01T00:00:00"),  # naive timestamps are refused
        lambda e: e["data"].update(duration_s=-1),
    ],
)
def test_invalid_envelopes_rejected(mutate: object) -> None:
    raw = json.loads(_run_event().model_dump_json())
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(ValidationError):
        parse_event(json.dumps(raw))


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_parser(blob: bytes) -> None:
    with contextlib.suppress(ValidationError, ValueError):
        parse_event(blob)


@given(
    key=st.text(min_size=1, max_size=50),
    status=st.sampled_from(list(HealthStatus)),
    owners=st.lists(st.emails(), max_size=3),
)
def test_health_event_round_trip(key: str, status: str, owners: list[str]) -> None:
    event = new_event(
        HealthChanged,
        "health.changed",
        identity=f"{key}:1",
        data=HealthChangedData(
            asset_key=key,
            status=status,
            previous_status="UNKNOWN",  # type: ignore[arg-type]
            evaluated_at=datetime(2026, 1, 1, tzinfo=UTC),
            owners=owners,
        ),
        source="test",
    )
    assert parse_event(event.to_fields()["event"]) == event
