"""Read functions over the registry, for the CLI (parameterised SQL only; no Dagster import)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from libs.common.events import from_timestamp
from libs.common.sql import Connection
from services.discovery.registry import downstream_map, downstream_of, upstream_of

_LIST_COLUMNS = (
    "key, code_location, group_name, description, owners, tags, kinds, metadata, code_version, partitioning, "
    "source_file, source_line, upstream, freshness, checks, job_names, repository, fingerprint, version, "
    "first_seen, last_seen, retired_at"
)

_LIGHT_COLUMNS = (
    "key, group_name, description, owners, tags, kinds, version, code_location, last_seen, retired_at"
)


def iso(ts: float | None) -> str | None:
    """A stored epoch time as ISO-8601 UTC (seconds precision)."""
    return from_timestamp(ts).isoformat(timespec="seconds") if ts is not None else None


def _asset(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "key": row["key"],
        "group": row["group_name"],
        "description": row["description"],
        "owners": json.loads(row["owners"]),
        "tags": json.loads(row["tags"]),
        "kinds": json.loads(row["kinds"]),
        "metadata": json.loads(row["metadata"]),
        "code_version": row["code_version"],
        "partitioning": row["partitioning"],
        "source_file": row["source_file"],
        "source_line": row["source_line"],
        "code_location": row["code_location"],
        "upstream": json.loads(row["upstream"]),
        "freshness": json.loads(row["freshness"]) if row["freshness"] else None,
        "checks": json.loads(row["checks"]),
        # NULL until the first snapshot after migration 3 fills it in
        "job_names": json.loads(row["job_names"]) if row["job_names"] is not None else [],
        "repository": row["repository"],
        "fingerprint": row["fingerprint"],
        "version": row["version"],
        "first_seen": iso(row["first_seen"]),
        "last_seen": iso(row["last_seen"]),
        "retired_at": iso(row["retired_at"]),
        "status": "retired" if row["retired_at"] is not None else "active",
    }


def list_assets(
    conn: Connection,
    *,
    group: str | None = None,
    owner: str | None = None,
    tags: dict[str, str] | None = None,
    kind: str | None = None,
    retired: bool | None = False,
    light: bool = False,
    location: str | None = None,
    job: str | None = None,
) -> list[dict[str, Any]]:
    """Registered assets matching every given filter, by key. `retired`: False active, True retired, None all.
    `job`: only the assets that job runs.

    `light` reads only what listings show (key, group, owners, tags, kinds, description, version, code
    location, last seen, retirement): 10,000 assets in a fraction of the full read.
    """
    where: list[str] = []
    params: list[Any] = []
    if retired is True:
        where.append("retired_at IS NOT NULL")
    elif retired is False:
        where.append("retired_at IS NULL")
    if group is not None:
        where.append("group_name = ?")
        params.append(group)
    if location is not None:
        where.append("code_location = ?")
        params.append(location)
    if owner is not None:
        # An owner matches as given, or as a team name without its `team:` prefix.
        where.append("EXISTS (SELECT 1 FROM json_each(assets.owners) o WHERE o.value = ? OR o.value = ?)")
        params.extend([owner, f"team:{owner}"])
    if kind is not None:
        where.append("EXISTS (SELECT 1 FROM json_each(assets.kinds) k WHERE k.value = ?)")
        params.append(kind)
    if job is not None:
        where.append("EXISTS (SELECT 1 FROM json_each(assets.job_names) j WHERE j.value = ?)")
        params.append(job)
    for tag_key, tag_value in (tags or {}).items():
        where.append("json_extract(assets.tags, '$.' || json_quote(?)) = ?")
        params.extend([tag_key, tag_value])
    columns = _LIGHT_COLUMNS if light else _LIST_COLUMNS
    sql = f"SELECT {columns} FROM assets"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY key"
    if not light:
        return [_asset(row) for row in conn.execute(sql, params)]
    # Owners, kinds and tags repeat across a catalog (a group's team, a kind), and so do the times of the
    # snapshot that last saw its assets: each distinct text is decoded once, and every row gets its own
    # shallow copy (flat lists of names and a flat mapping of strings), so a caller may still change one.
    # At 50,000 assets this is most of the listing's read (150,000 json.loads calls before).
    lists: dict[str, list[str]] = {}
    mappings: dict[str, dict[str, str]] = {}
    times: dict[float | None, str | None] = {None: None}

    def as_list(text: str) -> list[str]:
        found = lists.get(text)
        if found is None:
            found = lists[text] = json.loads(text)
        return found.copy()

    def as_mapping(text: str) -> dict[str, str]:
        found = mappings.get(text)
        if found is None:
            found = mappings[text] = json.loads(text)
        return found.copy()

    def as_iso(ts: float | None) -> str | None:
        if ts in times:
            return times[ts]
        text = times[ts] = iso(ts)
        return text

    return [
        {
            "key": key,
            "group": group,
            "description": description,
            "owners": as_list(owners),
            "tags": as_mapping(tags),
            "kinds": as_list(kinds),
            "version": version,
            "code_location": location,
            "last_seen": as_iso(last_seen),
            "retired_at": as_iso(retired_at),
            "status": "retired" if retired_at is not None else "active",
        }
        for (key, group, description, owners, tags, kinds, version, location, last_seen, retired_at) in (
            conn.execute(sql, params)
        )
    ]


def get_asset(conn: Connection, key: str) -> dict[str, Any] | None:
    """One asset (active or retired) with its direct downstream keys, or None."""
    row = conn.execute(f"SELECT {_LIST_COLUMNS} FROM assets WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    asset = _asset(row)
    asset["downstream"] = downstream_map(conn, [key]).get(key, [])
    return asset


def all_keys(conn: Connection) -> list[str]:
    """Every registered key (for "did you mean")."""
    return [r[0] for r in conn.execute("SELECT key FROM assets ORDER BY key")]


def distinct_values(conn: Connection) -> dict[str, set[str]]:
    """The groups, owners, kinds, jobs and tag keys in use (to reject filters that match nothing by typo)."""
    out: dict[str, set[str]] = {name: set() for name in ("group", "owner", "kind", "tag", "location", "job")}
    locations = conn.execute("SELECT DISTINCT code_location FROM assets")
    out["location"] = {r[0] for r in locations if r[0] is not None}
    out["group"] = {r[0] for r in conn.execute("SELECT DISTINCT group_name FROM assets") if r[0] is not None}
    out["owner"] = {
        r[0] for r in conn.execute("SELECT DISTINCT o.value FROM assets, json_each(assets.owners) o")
    }
    out["kind"] = {
        r[0] for r in conn.execute("SELECT DISTINCT k.value FROM assets, json_each(assets.kinds) k")
    }
    out["tag"] = {r[0] for r in conn.execute("SELECT DISTINCT t.key FROM assets, json_each(assets.tags) t")}
    out["job"] = {
        r[0] for r in conn.execute("SELECT DISTINCT j.value FROM assets, json_each(assets.job_names) j")
    }
    return out


def history(conn: Connection, key: str) -> list[dict[str, Any]]:
    """Every version of `key`, oldest first: version, change type, when, what changed, when retired."""
    return [
        {
            "version": row["version"],
            "change": row["change_type"],
            "recorded_at": iso(row["recorded_at"]),
            "changes": json.loads(row["changes"]),
            "retired_at": iso(row["retired_at"]),
            "fingerprint": row["fingerprint"],
        }
        for row in conn.execute(
            "SELECT version, change_type, recorded_at, changes, retired_at, fingerprint FROM asset_versions "
            "WHERE key = ? ORDER BY version",
            (key,),
        )
    ]


def lineage(conn: Connection, key: str) -> dict[str, list[tuple[str, int]]]:
    """All upstream and downstream keys of `key`, with their distance."""
    return {"upstream": upstream_of(conn, key), "downstream": downstream_of(conn, key)}


def code_locations(conn: Connection) -> list[dict[str, Any]]:
    """The registered code locations with their asset count, problems and last change."""
    return [
        {
            "code_location": row["name"],
            "assets": row["asset_count"],
            "problems": json.loads(row["problems"]),
            "changed_at": iso(row["changed_at"]),
        }
        for row in conn.execute(
            "SELECT name, asset_count, problems, changed_at FROM code_locations ORDER BY name"
        )
    ]


def direct_upstream(conn: Connection) -> dict[str, list[str]]:
    """Every asset's direct upstream keys (sorted), in one read of the edges (for listings)."""
    found: dict[str, list[str]] = {}
    for key, upstream in conn.execute(
        "SELECT asset_key, upstream_key FROM asset_deps ORDER BY asset_key, upstream_key"
    ):
        found.setdefault(key, []).append(upstream)
    return found
