"""Property tests of the pure parts: the sensor cursor parser and the JSON-safe metadata conversion."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.automation import AutomationCursor, InstigatorCursor
from orchestrator.catalog import json_safe
from orchestrator.sensors import KINDS, PublisherCursor

positions = st.fixed_dictionaries({kind: st.integers(min_value=-1, max_value=2**62) for kind in KINDS})


seen_ids = st.dictionaries(
    st.sampled_from(KINDS),
    st.lists(st.integers(min_value=0, max_value=2**62), min_size=1, max_size=20, unique=True).map(sorted),
)


@given(
    positions, st.one_of(st.none(), st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)), seen_ids
)
def test_cursor_round_trips(pos: dict[str, int], catalog: str | None, seen: dict[str, list[int]]) -> None:
    cursor = PublisherCursor(positions=pos, catalog=catalog, seen=seen)
    assert PublisherCursor.from_json(cursor.to_json()) == cursor


instigator_cursors = st.builds(
    InstigatorCursor,
    last=st.integers(min_value=-1, max_value=2**62),
    status=st.sampled_from(["", "SUCCESS", "SKIPPED", "FAILURE"]),
    since=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    open=st.lists(st.integers(min_value=0, max_value=2**62), max_size=5).map(sorted),
    marker=st.text(max_size=40),
    running=st.booleans(),
    read=st.integers(min_value=0, max_value=2**62),
)
automation_cursors = st.builds(
    AutomationCursor,
    instigators=st.dictionaries(
        st.text(alphabet="0123456789abcdef", min_size=1, max_size=40), instigator_cursors, max_size=5
    ),
    daemons=st.dictionaries(
        st.sampled_from(["SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"]),
        st.floats(min_value=0, max_value=4e9, allow_nan=False),
    ),
    seq=st.integers(min_value=0, max_value=2**62),
)


@given(positions, automation_cursors)
def test_cursor_with_tick_history_round_trips(pos: dict[str, int], automation: AutomationCursor) -> None:
    cursor = PublisherCursor(positions=pos, automation=automation)
    assert PublisherCursor.from_json(cursor.to_json()) == cursor


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_with_a_value_error(raw: str) -> None:
    try:
        cursor = PublisherCursor.from_json(raw)
    except ValueError:
        return
    assert set(cursor.positions) == set(KINDS)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers(), max_size=5)
        | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(json_like)
def test_json_safe_output_is_strict_json(value: object) -> None:
    text = json.dumps(json_safe(value), allow_nan=False)
    assert json.loads(text) is not None or text == "null"


def test_json_safe_refuses_nothing_odd() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert json_safe(Odd()) == "odd"
    with pytest.raises(ValueError):
        PublisherCursor.from_json('{"v": 99}')
