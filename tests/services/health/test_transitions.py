"""The transition rule as a property: over any sequence of runs, a health.changed event is staged exactly
when the asset's signature (status + outcomes of the non-passed checks) changes, numbered 1, 2, 3, ..."""

from __future__ import annotations

import itertools
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.bus import Delivery
from libs.common.events import (
    RUN_STATUS_TYPES,
    HealthChanged,
    MaterializationData,
    RunData,
    RunEvent,
    new_event,
    parse_event,
)
from libs.common.events import AssetMaterialized as Mat
from libs.common.settings import load_settings
from services.health.decide import health_status, signature
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store

T0 = 1_780_000_000.0
steps = st.lists(
    st.tuples(st.sampled_from(["SUCCESS", "FAILURE", "CANCELED"]), st.integers(0, 3)), min_size=1, max_size=25
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps)
def test_events_exactly_on_signature_changes(steps: list[tuple[str, int]]) -> None:
    from datetime import UTC, datetime

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_settings(
            HealthWorkerSettings,
            dagster_home=tmp,
            stores={"data_dir": tmp},
            health={"defaults": {"volume_min_training_size": 3}},
        )
        store = open_store(cfg)
        clock = [T0]
        engine = HealthService(store, cfg, clock=lambda: clock[0])
        signatures = ["UNKNOWN|"]
        for i, (status, size) in enumerate(steps):
            t = T0 + i * 3600
            clock[0] = t + 60
            run = RunData(
                run_id=f"r{i}",
                job_name="j",
                status=status,
                asset_keys=["a"],  # type: ignore[arg-type]
                started_at=datetime.fromtimestamp(t - 30, UTC),
                ended_at=datetime.fromtimestamp(t, UTC),
            )
            batch = [new_event(RunEvent, RUN_STATUS_TYPES[status], identity=f"r{i}", data=run, source="t")]
            # Row counts jump between sizes 10, 10^3, 10^5, 10^7: volume findings come and go.
            if status == "SUCCESS":
                data = MaterializationData(asset_key="a", run_id=f"r{i}", row_count=10 ** (1 + 2 * size))
                batch.insert(
                    0,
                    new_event(
                        Mat,
                        "asset.materialized",
                        identity=f"m{i}",
                        data=data,
                        source="t",
                        occurred_at=datetime.fromtimestamp(t - 1, UTC),
                    ),
                )
            engine.handle([Delivery("runs", f"{i}-{j}", e) for j, e in enumerate(batch)])
            engine.evaluate_all()  # a time-driven evaluation in between follows the same rule
            row = (
                store.connection()
                .execute("SELECT signature FROM asset_health WHERE asset_key = 'a'")
                .fetchone()
            )
            if row[0] != signatures[-1]:
                signatures.append(row[0])
        events = [
            parse_event(r[0])
            for r in store.connection().execute("SELECT payload FROM event_outbox ORDER BY seq")
        ]
        store.close()
    assert all(isinstance(e, HealthChanged) for e in events)
    assert [e.data.transition for e in events] == list(range(1, len(signatures)))  # type: ignore[union-attr]
    for event, sig in zip(events, signatures[1:], strict=True):
        data = event.data  # type: ignore[union-attr]
        assert signature(data.status, data.checks) == sig
        assert health_status(data.checks, has_data=True, retired=False) == data.status
    for before, after in itertools.pairwise(events):
        assert after.data.previous_status == before.data.status  # type: ignore[union-attr]
