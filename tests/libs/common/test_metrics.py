"""BatchHistogram must expose exactly what prometheus_client's Histogram exposes after one `observe` per
amount."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from libs.common.metrics import BatchHistogram

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str, str], float]:
    return {
        (s.name, s.labels.get("stream", ""), s.labels.get("le", "")): s.value
        for family in registry.collect()
        if family.name == name
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.lists(
                st.one_of(
                    st.sampled_from(BUCKETS), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
                ),
                max_size=50,
            ),
        ),
        max_size=8,
    )
)
def test_batch_histogram_matches_observe_one_by_one(batches: list[tuple[str, list[float]]]) -> None:
    registry = CollectorRegistry()
    one_by_one = Histogram("one_seconds", "one", ["stream"], buckets=BUCKETS, registry=registry)
    at_once = BatchHistogram("many_seconds", "many", ["stream"], buckets=BUCKETS, registry=registry)
    for stream, amounts in batches:
        child = one_by_one.labels(stream=stream)
        for amount in amounts:
            child.observe(amount)
        at_once.labels(stream=stream).observe_many(amounts)
    expected = {
        (n.replace("one", "many", 1), s, le): v for (n, s, le), v in samples(registry, "one_seconds").items()
    }
    got = samples(registry, "many_seconds")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-6)  # summed in another order
        else:
            assert got[key] == value, key


def test_batch_histogram_in_the_exposition_format() -> None:
    registry = CollectorRegistry()
    BatchHistogram("lag_seconds", "Lag", ["stream"], buckets=(1, 5), registry=registry).labels(
        stream="runs"
    ).observe_many([0.5, 3, 7])
    text = generate_latest(registry).decode()
    assert "# TYPE lag_seconds histogram" in text
    assert 'lag_seconds_bucket{le="1.0",stream="runs"} 1.0' in text
    assert 'lag_seconds_bucket{le="+Inf",stream="runs"} 3.0' in text
    assert 'lag_seconds_count{stream="runs"} 3.0' in text
