"""Incident grouping and incident notices: pure functions, lists and hypothesis, no store."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from services.alerts.incidents import IncidentView, Member, causes_of, group, incident_notice

HOUR = 3600.0
LINEAGE = {"child_a": {"root"}, "child_b": {"root"}, "grandchild": {"child_a", "child_b", "root"}}


def ancestors_of(lineage: dict[str, set[str]]):  # type: ignore[no-untyped-def]
    return lambda asset: frozenset(lineage.get(asset, set()))


def shape(groups):  # type: ignore[no-untyped-def]
    """What must not depend on arrival order: each incident's root and members."""
    return sorted((g.root.key, tuple(sorted(m.key for m in g.members))) for g in groups)


def blocked(key: str, asset: str, at: float, *causes: str, check: str = "execution_status") -> Member:
    return Member(key=key, asset_key=asset, check=check, started_at=at, causes=frozenset(causes))


def test_a_failed_root_and_the_assets_it_blocked_are_one_incident_rooted_at_the_root() -> None:
    members = [
        blocked("1", "grandchild", 10.0, "child_a", "child_b", check="dependencies"),
        blocked("2", "child_a", 5.0, "root"),
        blocked("3", "root", 5.0),
        blocked("4", "child_b", 5.0, "root"),
    ]
    (incident,) = group(members, ancestors_of(LINEAGE), HOUR)
    assert incident.root.asset_key == "root"
    assert {m.asset_key for m in incident.members} == {"root", "child_a", "child_b", "grandchild"}
    why = {p.member.asset_key: p.why for p in incident.placements}
    assert why["root"].startswith("root cause")
    assert "names upstream root as its cause" in why["child_a"]


def test_the_window_separates_unrelated_failures_but_a_named_cause_joins_whenever_it_started() -> None:
    late_unrelated = blocked("2", "child_a", 3 * HOUR)  # no cause named, hours later
    late_caused = blocked("3", "child_b", 3 * HOUR, "root", check="dependencies")
    groups = group([blocked("1", "root", 0.0), late_unrelated, late_caused], ancestors_of(LINEAGE), HOUR)
    assert shape(groups) == [("1", ("1", "3")), ("2", ("2",))]


def test_unrelated_assets_and_unknown_upstreams_stay_apart() -> None:
    members = [blocked("1", "x", 0.0, "no/such/asset"), blocked("2", "y", 0.0), blocked("3", "root", 0.0)]
    assert shape(group(members, ancestors_of(LINEAGE), HOUR)) == [("1", ("1",)), ("2", ("2",)), ("3", ("3",))]


def test_a_lineage_cycle_groups_once_with_a_deterministic_root() -> None:
    cycle = {"a": {"b"}, "b": {"a"}}
    members = [blocked("1", "b", 2.0), blocked("2", "a", 1.0)]
    for order in (members, members[::-1]):
        (incident,) = group(order, ancestors_of(cycle), HOUR)
        assert incident.root.key == "2"  # both are upstream of each other: the earliest is the root


def test_members_of_an_existing_incident_stay_together_when_the_lineage_changes() -> None:
    members = [blocked("1", "root", 0.0), blocked("2", "z_elsewhere", 0.0)]
    assert len(group(members, ancestors_of({}), HOUR)) == 2
    (incident,) = group(members, ancestors_of({}), HOUR, together=[["1", "2"]])
    assert incident.root.key == "1" and "already in this incident" in incident.placements[1].why


def test_causes_are_read_from_lists_and_texts_only() -> None:
    assert causes_of({"blocked_by": ["a", 3], "failed_upstream": "b", "other": ["c"]}) == {"a", "b"}


# -- property: any order of arrival gives the same incidents -----------------------------------------------

ASSETS = [f"a{i}" for i in range(6)]


@st.composite
def lineages_and_members(draw: st.DrawFn) -> tuple[dict[str, set[str]], list[Member]]:
    edges = draw(
        st.sets(st.tuples(st.integers(0, 5), st.integers(0, 5)).filter(lambda e: e[0] < e[1]), max_size=8)
    )
    parents: dict[str, set[str]] = {a: set() for a in ASSETS}
    for up, down in sorted(edges):
        parents[ASSETS[down]].add(ASSETS[up])
    lineage: dict[str, set[str]] = {}
    for asset in ASSETS:  # transitive closure (edges only go from lower to higher index)
        seen: set[str] = set()
        stack = list(parents[asset])
        while stack:
            up = stack.pop()
            if up not in seen:
                seen.add(up)
                stack.extend(parents[up])
        lineage[asset] = seen
    count = draw(st.integers(1, 8))
    members = []
    for i in range(count):
        asset = draw(st.sampled_from(ASSETS))
        causes = draw(st.sets(st.sampled_from(sorted(lineage[asset]) or ["a0"]), max_size=2))
        members.append(
            Member(
                key=f"m{i}",
                asset_key=asset,
                check=draw(st.sampled_from(["execution_status", "dependencies", "freshness"])),
                started_at=draw(st.sampled_from([0.0, 600.0, 5 * HOUR])),
                causes=frozenset(causes),
            )
        )
    return lineage, members


@given(lineages_and_members(), st.randoms(use_true_random=False))
def test_any_order_of_arrival_yields_the_same_incidents(
    case: tuple[dict[str, set[str]], list[Member]], rng: random.Random
) -> None:
    lineage, members = case
    shuffled = members[:]
    rng.shuffle(shuffled)
    ancestors = ancestors_of(lineage)
    first, second = group(members, ancestors, HOUR), group(shuffled, ancestors, HOUR)
    assert shape(first) == shape(second)
    assert sorted(m.key for g in first for m in g.members) == sorted(m.key for m in members)  # each once
    for g in first:  # the lineage is acyclic: nothing in an incident is upstream of its root
        assert not ({m.asset_key for m in g.members} - {g.root.asset_key}) & ancestors(g.root.asset_key)


@given(lineages_and_members())
def test_growing_an_incident_one_member_at_a_time_ends_where_grouping_all_at_once_does(
    case: tuple[dict[str, set[str]], list[Member]],
) -> None:
    """The service groups new alerts against the open incidents' members (kept together): arriving one by
    one must give what grouping the whole set at once gives."""
    lineage, members = case
    ancestors = ancestors_of(lineage)
    incidents: list[list[str]] = []
    for i in range(len(members)):
        incidents = [[m.key for m in g.members] for g in group(members[: i + 1], ancestors, HOUR, incidents)]
    assert sorted(map(sorted, incidents)) == sorted(
        sorted(m.key for m in g.members) for g in group(members, ancestors, HOUR)
    )


# -- incident notices ----------------------------------------------------------------------------------------


def view(**kw: object) -> IncidentView:
    base: dict[str, object] = dict(
        open=True,
        announced=False,
        acked=False,
        severity="critical",
        notified_severity=None,
        last_notified_at=None,
    )
    return IncidentView(**(base | kw))  # type: ignore[arg-type]


def test_incident_notices() -> None:
    assert incident_notice(view(), [("1", "firing"), ("2", "firing")], 0.0, HOUR) == "firing"
    announced = view(
        announced=True, notified_severity="critical", last_notified_at=0.0, announced_members=frozenset({"1"})
    )
    assert incident_notice(announced, [("2", "firing")], 10.0, HOUR) == "updated"
    assert incident_notice(announced, [("1", "repeat")], 10.0, HOUR) is None  # within the repeat interval
    assert incident_notice(announced, [("1", "repeat"), ("3", "repeat")], HOUR, HOUR) == "repeat"
    assert (
        incident_notice(
            view(announced=True, acked=True, last_notified_at=0.0, notified_severity="critical"),
            [("1", "repeat")],
            HOUR,
            HOUR,
        )
        is None
    )
    worse = view(
        announced=True,
        severity="critical",
        notified_severity="warning",
        last_notified_at=0.0,
        announced_members=frozenset({"1"}),
    )
    assert incident_notice(worse, [("1", "escalated")], 1.0, HOUR) == "escalated"
    assert incident_notice(view(open=False, announced=True), [("1", "resolved")], 1.0, HOUR) == "resolved"
    assert incident_notice(view(open=False), [("1", "resolved")], 1.0, HOUR) is None  # never announced
    assert incident_notice(announced, [("2", "resolved")], 1.0, HOUR) is None  # others still fire
