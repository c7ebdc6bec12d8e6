"""The asset registry: register code-location snapshots, detect changes, keep versions, answer lineage.

Pure logic over an open SQLite connection; the caller owns the transaction (`Store.write()`), so the
worker can claim the snapshot's event id and stage the derived events in the same commit.

Decisions (see also README "Discovery"):

* An asset's *definition fingerprint* covers what its author defines: group, description, owners, tags,
  kinds, metadata, code version, partitioning, freshness, checks, upstream keys, source file, code
  location, the jobs that run it and its repository. A different fingerprint is a new version, with a
  field-level diff (`{field: {old, new}}`). A job added or edited to select an asset is a new version of
  that asset: which jobs run it is how it gets materialized.
* Fields the registry did not record yet (`job_names`, `repository` of rows registered before migration
  3, `UNRECORDED`) are filled in by the next snapshot without a version and left out of any diff: an
  upgrade is not a change of every asset.
* `source_line` and `downstream` are not part of the definition: editing a line above an asset, or adding a
  child asset elsewhere, must not bump every neighbour's version. The line is stored (the row is updated
  without a new version); downstream keys are derived from the other assets' upstream edges when read.
* An asset missing from its code location's snapshot is retired: kept, `retired_at` set, its edges to its
  upstream removed. A snapshot that reports load problems retires nothing (a module that failed to import
  must not retire its assets). A retired asset that comes back gets a new version (`returned`).
* An unchanged snapshot writes nothing. The location keeps the producer's snapshot fingerprint (a hash
  of the whole snapshot, `libs.common.events.snapshot_fingerprint`) and a hash over its active assets'
  stored rows:
  the same producer fingerprint (and problems) returns at once, without even hashing the assets; a
  different one whose assets hash the same only records the new producer fingerprint. Hence `last_seen` is
  the time of the latest snapshot that changed something in the asset's code location (and contained the
  asset), not of the latest rescan; the worker exports the time of the latest scan as a metric instead.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic_core import to_json

from libs.common.events import (
    AssetChanged,
    AssetChangeData,
    AssetSpecData,
    CatalogSnapshotData,
    from_timestamp,
    new_event,
)
from libs.common.sql import Connection

ChangeKind = Literal["registered", "changed", "returned", "retired"]

# Fields of AssetSpecData that define an asset (in fingerprint order); `group` is `group_name` in SQL.
DEFINITION_FIELDS: tuple[str, ...] = (
    "group",
    "description",
    "owners",
    "tags",
    "kinds",
    "metadata",
    "code_version",
    "partitioning",
    "freshness",
    "checks",
    "upstream",
    "source_file",
    "code_location",
    "job_names",
    "repository",
)
_JSON_FIELDS = frozenset(
    {"owners", "tags", "kinds", "metadata", "upstream", "freshness", "checks", "job_names"}
)
# Definition fields added after assets were first registered: NULL `job_names` marks a row from before them.
UNRECORDED = ("job_names", "repository")
_COLUMN = {"group": "group_name"}

EVENT_TYPES: dict[ChangeKind, str] = {
    "registered": "asset.registered",
    "returned": "asset.registered",
    "changed": "asset.changed",
    "retired": "asset.retired",
}


@dataclass(frozen=True)
class Change:
    """One change the registry recorded."""

    kind: ChangeKind
    key: str
    version: int
    spec: AssetSpecData
    changes: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


# One encoder for every call: building a JSONEncoder per json.dumps(...) call with options was most of the
# cost of a cold registration.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


def _dumps(value: Any) -> str:
    return _ENCODE(value)


_LIST_FIELDS = ("owners", "kinds", "upstream", "downstream", "checks", "job_names")
_DEFINITION_SET: set[str] = set(DEFINITION_FIELDS)


def _sorted_dict(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _sorted_dict(v) if isinstance(v, dict) else v for k, v in sorted(value.items())}


def _keys_sorted(value: dict[str, Any]) -> bool:
    keys = list(value)
    return keys == sorted(keys) and all(_keys_sorted(v) for v in value.values() if isinstance(v, dict))


def normalise(spec: AssetSpecData) -> AssetSpecData:
    """The spec with order-insensitive lists sorted and de-duplicated and mapping keys sorted, so that
    order never makes a version. Returns `spec` itself when it is already normal (the common case)."""
    update: dict[str, Any] = {}
    for name in _LIST_FIELDS:
        value = getattr(spec, name)
        if len(value) < 2:  # already sorted and unique (most lists): no set, no sort
            continue
        normal = sorted(set(value))
        if normal != value:
            update[name] = normal
    for name in ("tags", "metadata", "freshness"):
        value = getattr(spec, name)
        if value and not _keys_sorted(value):
            update[name] = _sorted_dict(value)
    return spec.model_copy(update=update) if update else spec


def definition(spec: AssetSpecData) -> dict[str, Any]:
    """The defining fields of a (normalised) spec, as JSON-ready values."""
    return {name: getattr(spec, name) for name in DEFINITION_FIELDS}


def fingerprint(spec: AssetSpecData) -> str:
    """The definition fingerprint of a normalised spec (pydantic's serializer: fast, key order as stored)."""
    return hashlib.sha256(spec.model_dump_json(include=_DEFINITION_SET).encode()).hexdigest()[:32]


def _row_hash(def_fp: str, spec: AssetSpecData) -> str:
    return hashlib.sha256(f"{def_fp}|{spec.source_line}".encode()).hexdigest()[:32]


def _location_hash(row_hashes: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for key, row_hash in sorted(row_hashes):
        digest.update(f"{key}\x00{row_hash}\n".encode())
    return digest.hexdigest()[:32]


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Field-level diff of two definitions: `{field: {"old": ..., "new": ...}}` for fields that differ."""
    return {
        name: {"old": old.get(name), "new": new.get(name)}
        for name in DEFINITION_FIELDS
        if _dumps(old.get(name)) != _dumps(new.get(name))
    }


def _ts(when: datetime) -> float:
    return when.timestamp()


def _iso(ts: float | None) -> str | None:
    return from_timestamp(ts).isoformat() if ts is not None else None


def _row_definition(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in DEFINITION_FIELDS:
        value = row[_COLUMN.get(name, name)]
        out[name] = json.loads(value) if name in _JSON_FIELDS and value is not None else value
    return out


def spec_from_row(row: sqlite3.Row, downstream: Sequence[str] = ()) -> AssetSpecData:
    """The AssetSpecData of a stored asset row."""
    values = _row_definition(row)
    if values["job_names"] is None:  # not recorded yet (registered before migration 3)
        values["job_names"] = []
    return AssetSpecData(
        key=row["key"], source_line=row["source_line"], downstream=list(downstream), **values
    )


@dataclass
class _Planned:
    spec: AssetSpecData
    def_fp: str
    row_hash: str


def plan(snapshot: CatalogSnapshotData) -> tuple[dict[str, _Planned], str]:
    """Normalise and fingerprint a snapshot: key → planned row, and the location hash. No I/O."""
    planned: dict[str, _Planned] = {}
    location = snapshot.code_location
    for raw in snapshot.assets:
        spec = normalise(
            raw if raw.code_location == location else raw.model_copy(update={"code_location": location})
        )
        def_fp = fingerprint(spec)
        planned[spec.key] = _Planned(spec, def_fp, _row_hash(def_fp, spec))
    return planned, _location_hash((k, p.row_hash) for k, p in planned.items())


_INSERT_ASSET = """
INSERT INTO assets (key, code_location, group_name, description, owners, tags, kinds, metadata, code_version,
    partitioning, source_file, source_line, upstream, freshness, checks, job_names, repository, fingerprint,
    row_hash, version, first_seen, last_seen, retired_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
"""
_UPDATE_ASSET = """
UPDATE assets SET code_location = ?, group_name = ?, description = ?, owners = ?, tags = ?, kinds = ?,
    metadata = ?, code_version = ?, partitioning = ?, source_file = ?, source_line = ?, upstream = ?,
    freshness = ?, checks = ?, job_names = ?, repository = ?, fingerprint = ?, row_hash = ?, version = ?,
    last_seen = ?, retired_at = NULL, updated_at = ?
WHERE key = ?
"""
_INSERT_VERSION = """
INSERT INTO asset_versions (key, version, change_type, fingerprint, spec, changes, recorded_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""


def _json(value: Any) -> str:
    # pydantic-core's encoder: compact, and the normalised spec's mappings already have sorted keys.
    return to_json(value).decode()


def _columns(spec: AssetSpecData) -> tuple[Any, ...]:
    return (
        spec.code_location,
        spec.group,
        spec.description,
        _json(spec.owners),
        _json(spec.tags),
        _json(spec.kinds),
        _json(spec.metadata),
        spec.code_version,
        spec.partitioning,
        spec.source_file,
        spec.source_line,
        _json(spec.upstream),
        _json(spec.freshness) if spec.freshness is not None else None,
        _json(spec.checks),
        _json(spec.job_names),
        spec.repository,
    )


def _spec_json(spec: AssetSpecData) -> str:
    return spec.model_dump_json(exclude={"downstream"})


def register_snapshot(
    conn: Connection, snapshot: CatalogSnapshotData, now: datetime | None = None
) -> list[Change]:
    """Register one code location's snapshot inside the caller's write transaction; returns the changes.

    An unchanged snapshot returns `[]` without writing anything.
    """
    now = now or datetime.now(UTC)
    ts = _ts(now)
    location = snapshot.code_location
    problems = list(snapshot.problems)
    loc_row = conn.execute(
        "SELECT fingerprint, snapshot_fingerprint, problems FROM code_locations WHERE name = ?", (location,)
    ).fetchone()
    same_problems = loc_row is not None and json.loads(loc_row["problems"]) == problems
    if same_problems and loc_row["snapshot_fingerprint"] == snapshot.fingerprint:
        return []  # the producer's fingerprint covers the whole snapshot: nothing to compare
    planned, location_hash = plan(snapshot)
    if same_problems and loc_row["fingerprint"] == location_hash:
        # Nothing the registry keeps differs (e.g. only downstream lists moved): remember the producer's
        # fingerprint so that the next identical snapshot takes the first exit, and record nothing else.
        conn.execute(
            "UPDATE code_locations SET snapshot_fingerprint = ? WHERE name = ?",
            (snapshot.fingerprint, location),
        )
        return []

    existing: dict[str, sqlite3.Row] = {
        row["key"]: row
        for row in conn.execute(
            "SELECT * FROM assets WHERE code_location = ? OR code_location IS NULL", (location,)
        )
    }
    missing = [k for k in planned if k not in existing]
    for start in range(0, len(missing), 500):
        chunk = missing[start : start + 500]
        marks = ",".join("?" * len(chunk))
        existing.update(
            (row["key"], row) for row in conn.execute(f"SELECT * FROM assets WHERE key IN ({marks})", chunk)
        )

    changes: list[Change] = []
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    versions: list[tuple[Any, ...]] = []
    dep_deletes: list[tuple[str]] = []
    dep_inserts: list[tuple[str, str]] = []
    for key, item in planned.items():
        spec = item.spec
        row = existing.get(key)
        if row is None:
            inserts.append((key, *_columns(spec), item.def_fp, item.row_hash, 1, ts, ts, ts))
            versions.append((key, 1, "registered", item.def_fp, _spec_json(spec), "{}", ts))
            dep_inserts.extend((key, up) for up in spec.upstream)
            changes.append(Change("registered", key, 1, spec, {}, now))
            continue
        retired = row["retired_at"] is not None
        if not retired and row["row_hash"] == item.row_hash:
            continue
        if not retired and row["fingerprint"] == item.def_fp:
            # Only the source line moved: keep the row current without a new version.
            updates.append((*_columns(spec), item.def_fp, item.row_hash, row["version"], ts, ts, key))
            continue
        delta = diff(_row_definition(row), definition(spec))
        if row["job_names"] is None:  # registered before these fields: recording them is no change
            for name in UNRECORDED:
                delta.pop(name, None)
            if not delta and not retired:
                updates.append((*_columns(spec), item.def_fp, item.row_hash, row["version"], ts, ts, key))
                continue
        version = int(row["version"]) + 1
        kind: ChangeKind = "changed"
        if retired:
            kind = "returned"
            delta["retired_at"] = {"old": _iso(row["retired_at"]), "new": None}
        updates.append((*_columns(spec), item.def_fp, item.row_hash, version, ts, ts, key))
        versions.append((key, version, kind, item.def_fp, _spec_json(spec), _dumps(delta), ts))
        if retired or "upstream" in delta:
            dep_deletes.append((key,))
            dep_inserts.extend((key, up) for up in spec.upstream)
        changes.append(Change(kind, key, version, spec, delta, now))

    retire: list[sqlite3.Row] = []
    if not problems:
        retire = [
            row
            for key, row in existing.items()
            if row["code_location"] == location and row["retired_at"] is None and key not in planned
        ]
    for row in retire:
        spec = spec_from_row(row)
        changes.append(
            Change(
                "retired",
                row["key"],
                int(row["version"]),
                spec,
                {"retired_at": {"old": None, "new": now.isoformat()}},
                now,
            )
        )
        dep_deletes.append((row["key"],))

    if inserts:
        conn.executemany(_INSERT_ASSET, inserts)
    if updates:
        conn.executemany(_UPDATE_ASSET, updates)
    if versions:
        conn.executemany(_INSERT_VERSION, versions)
    if retire:
        keys = [(ts, ts, row["key"]) for row in retire]
        conn.executemany("UPDATE assets SET retired_at = ?, updated_at = ? WHERE key = ?", keys)
        conn.executemany(
            "UPDATE asset_versions SET retired_at = ? WHERE key = ? AND version = ?",
            [(ts, row["key"], row["version"]) for row in retire],
        )
    if dep_deletes:
        conn.executemany("DELETE FROM asset_deps WHERE asset_key = ?", dep_deletes)
    if dep_inserts:
        conn.executemany(
            "INSERT OR IGNORE INTO asset_deps (asset_key, upstream_key) VALUES (?, ?)", dep_inserts
        )
    # Every asset of the location was seen in this (changing) snapshot.
    conn.execute(
        "UPDATE assets SET last_seen = ? WHERE code_location = ? AND retired_at IS NULL", (ts, location)
    )
    stored_hash = _location_hash(
        (r["key"], r["row_hash"])
        for r in conn.execute(
            "SELECT key, row_hash FROM assets WHERE code_location = ? AND retired_at IS NULL", (location,)
        )
    )
    conn.execute(
        """INSERT INTO code_locations (name, fingerprint, snapshot_fingerprint, asset_count, problems,
           changed_at) VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,
             snapshot_fingerprint = excluded.snapshot_fingerprint, asset_count = excluded.asset_count,
             problems = excluded.problems, changed_at = excluded.changed_at""",
        (location, stored_hash, snapshot.fingerprint, len(planned), _dumps(problems), ts),
    )
    return _with_downstream(conn, upstream_first(changes))


def upstream_first(changes: Sequence[Change]) -> list[Change]:
    """`changes` with every asset after the changed assets it depends on, otherwise in their order (a cycle
    is released at its earliest member). Consumers apply the events in this order, so a downstream asset
    registered in the same snapshot as its upstream never finds that upstream unregistered (health judged
    it degraded for an instant, and alerts paged for it)."""
    position = {c.key: i for i, c in enumerate(changes)}
    blocking = [{position[u] for u in c.spec.upstream if u in position and u != c.key} for c in changes]
    dependents: dict[int, list[int]] = {}
    for i, ups in enumerate(blocking):
        for u in ups:
            dependents.setdefault(u, []).append(i)
    ready = [i for i, ups in enumerate(blocking) if not ups]
    heapq.heapify(ready)
    ordered: list[int] = []
    placed = [False] * len(changes)
    while len(ordered) < len(changes):
        if not ready:  # only cycles are left
            ready = [next(i for i, p in enumerate(placed) if not p)]
        i = heapq.heappop(ready)
        if placed[i]:
            continue
        placed[i] = True
        ordered.append(i)
        for d in dependents.get(i, []):
            blocking[d].discard(i)
            if not blocking[d] and not placed[d]:
                heapq.heappush(ready, d)
    return [changes[i] for i in ordered]


def _with_downstream(conn: Connection, changes: list[Change]) -> list[Change]:
    """Fill each change's spec with the downstream keys as they are after this registration."""
    if not changes:
        return changes
    children = downstream_map(conn, [c.key for c in changes])

    def filled(c: Change) -> Change:
        downstream = children.get(c.key, [])
        if c.spec.downstream == downstream:  # as the producer read it (the usual case): no copy
            return c
        spec = c.spec.model_copy(update={"downstream": downstream})
        return Change(c.kind, c.key, c.version, spec, c.changes, c.at)

    return [filled(c) for c in changes]


def downstream_map(conn: Connection, keys: Sequence[str]) -> dict[str, list[str]]:
    """Direct downstream keys (active assets) of each of `keys`."""
    out: dict[str, list[str]] = {}
    wanted = set(keys)
    if len(wanted) > 500:
        rows: Iterable[sqlite3.Row] = conn.execute(
            "SELECT d.upstream_key, d.asset_key FROM asset_deps d ORDER BY d.upstream_key, d.asset_key"
        )
    else:
        marks = ",".join("?" * len(wanted))
        rows = conn.execute(
            f"SELECT upstream_key, asset_key FROM asset_deps WHERE upstream_key IN ({marks}) ORDER BY 1, 2",
            sorted(wanted),
        )
    for parent, child in rows:
        if parent in wanted:
            out.setdefault(parent, []).append(child)
    return out


def to_events(changes: Sequence[Change], *, source: str = "discovery") -> list[AssetChanged]:
    """The AssetChanged events announcing `changes` (deterministic ids: key, version and kind)."""
    events: list[AssetChanged] = []
    for change in changes:
        event_type = EVENT_TYPES[change.kind]
        identity = f"{change.key}|v{change.version}"
        retired_at = None
        if change.kind == "retired":
            identity += f"|retired|{change.at.isoformat()}"
            retired_at = change.at
        events.append(
            new_event(
                AssetChanged,
                event_type,
                identity=identity,
                data=AssetChangeData(
                    spec=change.spec, version=change.version, changes=change.changes, retired_at=retired_at
                ),
                source=source,
                occurred_at=change.at,
            )
        )
    return events


# -- lineage ---------------------------------------------------------------------------------------------


def _walk(conn: Connection, key: str, *, up: bool) -> list[tuple[str, int]]:
    # The recursive CTE collects the reachable sub-graph (UNION on the key alone, so it terminates even on
    # a cycle in a hostile snapshot); depths are then the shortest paths, found breadth-first in Python.
    near, far = ("asset_key", "upstream_key") if up else ("upstream_key", "asset_key")
    edges = conn.execute(
        f"""WITH RECURSIVE reach(key) AS (
               SELECT ?
               UNION
               SELECT d.{far} FROM asset_deps d JOIN reach ON d.{near} = reach.key
           )
           SELECT d.{near}, d.{far} FROM asset_deps d JOIN reach ON d.{near} = reach.key""",
        (key,),
    ).fetchall()
    nexts: dict[str, list[str]] = {}
    for a, b in edges:
        nexts.setdefault(a, []).append(b)
    depth = {key: 0}
    frontier = [key]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for other in nexts.get(node, ()):
                if other not in depth:
                    depth[other] = depth[node] + 1
                    following.append(other)
        frontier = following
    del depth[key]
    return sorted(depth.items(), key=lambda item: (item[1], item[0]))


def upstream_of(conn: Connection, key: str) -> list[tuple[str, int]]:
    """Every asset `key` depends on, at any depth: (key, depth) sorted by depth then key."""
    return _walk(conn, key, up=True)


def downstream_of(conn: Connection, key: str) -> list[tuple[str, int]]:
    """Every asset depending on `key`, at any depth: (key, depth) sorted by depth then key."""
    return _walk(conn, key, up=False)


# -- code locations ------------------------------------------------------------------------------------


def record_problems(
    conn: Connection, location: str, problems: Sequence[str], now: datetime | None = None
) -> bool:
    """Record that `location` could not be read (its problems), touching none of its assets.

    A location in error must not retire what it defined; the registry keeps its last assets and the location
    row says why it is stale. Returns True when the recorded problems changed.
    """
    ts = _ts(now or datetime.now(UTC))
    found = sorted(problems)
    row = conn.execute("SELECT problems FROM code_locations WHERE name = ?", (location,)).fetchone()
    if row is not None and json.loads(row["problems"]) == found:
        return False
    if row is None:
        count = conn.execute(
            "SELECT COUNT(*) FROM assets WHERE code_location = ? AND retired_at IS NULL", (location,)
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO code_locations "
            "(name, fingerprint, snapshot_fingerprint, asset_count, problems, changed_at) "
            "VALUES (?, '', NULL, ?, ?, ?)",
            (location, int(count), _dumps(found), ts),
        )
    else:
        # The producer fingerprint is forgotten: the next good snapshot is compared asset by asset.
        conn.execute(
            "UPDATE code_locations SET problems = ?, snapshot_fingerprint = NULL, changed_at = ? "
            "WHERE name = ?",
            (_dumps(found), ts, location),
        )
    return True


def set_source(conn: Connection, location: str, source: str) -> None:
    """Remember which reader registered `location` last (`dagster`, `sensor` or `local`)."""
    conn.execute(
        "UPDATE code_locations SET source = ? WHERE name = ? AND source != ?", (source, location, source)
    )


def source_of(conn: Connection, location: str) -> str | None:
    """The reader that registered `location` last, or None for an unknown location."""
    row = conn.execute("SELECT source FROM code_locations WHERE name = ?", (location,)).fetchone()
    return str(row[0]) if row is not None else None


def locations_from(conn: Connection, source: str) -> list[str]:
    """The locations registered last by `source` that still have active assets."""
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT c.name FROM code_locations c WHERE c.source = ? AND EXISTS "
            "(SELECT 1 FROM assets a WHERE a.code_location = c.name AND a.retired_at IS NULL) "
            "ORDER BY c.name",
            (source,),
        )
    ]
