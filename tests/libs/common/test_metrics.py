"""observe_many must expose exactly what one `observe` per amount would."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from libs.common.metrics import observe_many

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    (family,) = histogram.collect()
    return {(s.name, s.labels.get("le", "")): s.value for s in family.samples if not s.name.endswith("_created")}


@given(st.lists(st.one_of(st.sampled_from(BUCKETS), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)), max_size=200))
def test_observe_many_matches_observe_one_by_one(amounts: list[float]) -> None:
    registry = CollectorRegistry()
    one_by_one = Histogram("one", "one", ["stream"], buckets=BUCKETS, registry=registry)
    at_once = Histogram("many", "many", ["stream"], buckets=BUCKETS, registry=registry)
    child = one_by_one.labels(stream="s")
    for amount in amounts:
        child.observe(amount)
    observe_many(at_once.labels(stream="s"), amounts)
    expected = {(name.replace("one", "many", 1), le): v for (name, le), v in samples(one_by_one).items()}
    got = samples(at_once)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-6)  # summed in another order
        else:
            assert got[key] == value, key
