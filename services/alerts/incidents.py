"""Incidents: alerts with one root cause, grouped by lineage. Pure functions, no store, no clock.

An alert (one firing episode of an (asset, check)) is a *member*. Two members are linked when

* one names the other's asset as its cause (a blocked asset's `blocked_by`, a dependency check's
  `failed_upstream`), whenever each started; or
* they are on the same asset, or one's asset is upstream of the other's (any depth), and they started within
  `window_s` of each other: the same anomaly propagating down the lineage.

An incident is a connected set of linked members. Its root is the member no other member's asset is upstream
of (in a lineage cycle: every member of the cycle qualifies), the earliest started, then by check order, then
by key; every other member records the link that attached it (`Placement.why`). The grouping is a function
of the set of members and the lineage only, so any order of arrival gives the same incidents.

Which notice an incident sends (`incident_notice`) is decided from what its members' own state machines
announced in one transaction: one message per receiver per incident, later members an update, never a page.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from libs.common.events import CHECK_NAMES
from libs.common.text import duration

IncidentNoticeKind = Literal["firing", "updated", "escalated", "repeat", "resolved", "merged"]
# Check-result values naming the upstream assets that caused this result (set by the health service).
CAUSE_VALUES = ("blocked_by", "failed_upstream")
_CHECK_ORDER: dict[str, int] = {str(name): i for i, name in enumerate(CHECK_NAMES)}
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}


@dataclass(frozen=True)
class Member:
    """One alert as grouping sees it."""

    key: str  # unique per alert (the alert id as text)
    asset_key: str
    check: str
    started_at: float
    causes: frozenset[str] = frozenset()  # upstream assets the alert's own check names as its cause


@dataclass(frozen=True)
class Placement:
    """Where a member sits in its incident and why."""

    member: Member
    parent: Member | None  # the member it was attached through (None for the root)
    why: str


@dataclass(frozen=True)
class Group:
    """One incident's members: the root first, then breadth-first from it."""

    root: Member
    placements: tuple[Placement, ...]

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(p.member for p in self.placements)


def causes_of(values: Mapping[str, object]) -> frozenset[str]:
    """The asset keys a check result's values name as its cause."""
    found: set[str] = set()
    for name in CAUSE_VALUES:
        value = values.get(name)
        if isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
        elif isinstance(value, str):
            found.add(value)
    return frozenset(found)


def _link(a: Member, b: Member, ancestors: Callable[[str], frozenset[str]], window_s: float) -> str | None:
    """Why `b` belongs with `a` (read as: b is attached through a), or None."""
    if a.asset_key in b.causes:
        return f"{b.check} on {b.asset_key} names upstream {a.asset_key} as its cause"
    if b.asset_key in a.causes:
        return f"{a.check} on {a.asset_key} names {b.asset_key} as its cause"
    apart = abs(b.started_at - a.started_at)
    if apart > window_s:
        return None
    if a.asset_key == b.asset_key:
        return f"same asset as {a.check}, started within {duration(apart)}"
    if a.asset_key in ancestors(b.asset_key):
        return f"downstream of {a.asset_key} ({a.check}), started within {duration(apart)}"
    if b.asset_key in ancestors(a.asset_key):
        return f"upstream of {a.asset_key} ({a.check}), started within {duration(apart)}"
    return None


def _root_order(m: Member) -> tuple[float, int, str, str]:
    return (m.started_at, _CHECK_ORDER.get(m.check, len(_CHECK_ORDER)), m.asset_key, m.key)


def group(
    members: Iterable[Member],
    ancestors: Callable[[str], frozenset[str]],
    window_s: float,
    together: Iterable[Iterable[str]] = (),
) -> list[Group]:
    """The incidents `members` form. `ancestors(asset)` is every asset upstream of it (any depth);
    `together` lists sets of member keys that must stay in one incident (an existing incident's members:
    a lineage that changed later never splits an open incident)."""
    by_key = {m.key: m for m in sorted(members, key=lambda m: m.key)}
    ordered = list(by_key.values())
    parent = {k: k for k in by_key}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_asset: dict[str, list[Member]] = {}
    for m in ordered:
        by_asset.setdefault(m.asset_key, []).append(m)
    links: dict[str, list[tuple[str, str]]] = {k: [] for k in by_key}
    tried: set[tuple[str, str]] = set()
    for member in ordered:
        # Every link has one end whose own asset, upstream assets or named causes hold the other end: only
        # those members are tried (not every pair, which thousands of alerts of a catch-up would make slow).
        near = {member.asset_key} | ((ancestors(member.asset_key) | member.causes) & by_asset.keys())
        for other in (o for asset in sorted(near) for o in by_asset[asset]):
            a, b = (member, other) if member.key < other.key else (other, member)
            if a.key == b.key or (a.key, b.key) in tried:
                continue
            tried.add((a.key, b.key))
            why_b = _link(a, b, ancestors, window_s)
            if why_b is not None:
                why_a = _link(b, a, ancestors, window_s) or why_b
                links[a.key].append((b.key, why_b))
                links[b.key].append((a.key, why_a))
                union(a.key, b.key)
    for keys in together:
        present = [k for k in keys if k in by_key]
        for k in present[1:]:
            union(present[0], k)
    components: dict[str, list[Member]] = {}
    for m in ordered:
        components.setdefault(find(m.key), []).append(m)
    return sorted(
        (_placed(c, links, ancestors) for c in components.values()), key=lambda g: _root_order(g.root)
    )


def _placed(
    component: list[Member],
    links: Mapping[str, list[tuple[str, str]]],
    ancestors: Callable[[str], frozenset[str]],
) -> Group:
    assets = {m.asset_key for m in component}
    heads = [m for m in component if not (ancestors(m.asset_key) - {m.asset_key}) & assets]
    root = min(heads or component, key=_root_order)
    by_key = {m.key: m for m in component}
    placements = [Placement(root, None, "root cause: nothing upstream of it is failing in this incident")]
    seen = {root.key}
    queue = deque([root])
    while queue:
        current = queue.popleft()
        for other, why in sorted(links[current.key], key=lambda kv: _root_order(by_key[kv[0]])):
            if other in seen or other not in by_key:
                continue
            seen.add(other)
            placements.append(Placement(by_key[other], current, why))
            queue.append(by_key[other])
    for m in sorted(component, key=_root_order):  # held together only by an earlier incident
        if m.key not in seen:
            placements.append(Placement(m, root, f"already in this incident with {root.asset_key}"))
    return Group(root, tuple(placements))


# -- notices ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentView:
    """What the notice decision needs to know about one incident."""

    open: bool
    announced: bool
    acked: bool
    severity: str | None  # the worst of its firing members
    notified_severity: str | None
    last_notified_at: float | None
    announced_members: frozenset[str] = field(default_factory=frozenset)


def incident_notice(
    view: IncidentView, member_notices: Sequence[tuple[str, str]], now: float, repeat_interval_s: float
) -> IncidentNoticeKind | None:
    """The one notice an incident sends after a transaction in which its members' state machines decided
    `member_notices` ((member key, kind) pairs: firing, escalated, repeat, resolved), or None.

    A member announcing itself opens the incident's announcement (firing), or, once announced, updates it
    (a member not announced before); a worse severity escalates; repeats are at most one per
    `repeat_interval_s` and not once acknowledged; the incident is resolved once, when no member fires.
    """
    kinds = {kind for _, kind in member_notices}
    if not view.open:
        return "resolved" if view.announced else None
    if not kinds - {"resolved"}:
        return None
    if not view.announced:
        return "firing" if kinds & {"firing", "escalated", "repeat"} else None
    new = {k for k, kind in member_notices if kind == "firing" and k not in view.announced_members}
    if new:
        return "updated"
    if SEVERITY_RANK.get(view.severity or "", 0) > SEVERITY_RANK.get(view.notified_severity or "", 0):
        return "escalated"
    if (
        "repeat" in kinds
        and not view.acked
        and (view.last_notified_at is None or now >= view.last_notified_at + repeat_interval_s)
    ):
        return "repeat"
    return None
