"""health.db: execution history per asset, the spec copy of each asset, the latest check results and
health per asset, and the transitions published."""

from __future__ import annotations

import json
import time

from libs.common.events import AssetSpecData
from libs.common.settings import Settings, StoreName
from libs.common.sql import Connection
from libs.common.store import Migration, Store
from services.health.model import AssetHistory, Execution, Failure, Materialization

# Redeliveries are recognised by `Store.claim_events` (processed_events); the event_id columns are kept for
# tracing, without a unique index of their own (a second random-key B-tree per event costs throughput).
MIGRATIONS = [
    Migration(
        1,
        "history, specs, checks, health",
        """
        CREATE TABLE executions (
            asset_key TEXT NOT NULL,
            run_id TEXT NOT NULL,
            job_name TEXT,
            status TEXT NOT NULL,
            started_at REAL,
            ended_at REAL,
            duration_s REAL,
            error TEXT,
            partition TEXT,
            updated_at REAL NOT NULL,
            PRIMARY KEY (asset_key, run_id)
        ) WITHOUT ROWID;
        CREATE INDEX executions_at ON executions (asset_key, COALESCE(ended_at, started_at));
        CREATE TABLE materializations (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            asset_key TEXT NOT NULL,
            run_id TEXT NOT NULL,
            storage_id INTEGER,
            partition TEXT,
            row_count INTEGER,
            duration_s REAL,
            column_schema TEXT,
            occurred_at REAL NOT NULL
        );
        CREATE INDEX materializations_asset_at ON materializations (asset_key, occurred_at);
        CREATE TABLE materialization_failures (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            asset_key TEXT NOT NULL,
            run_id TEXT NOT NULL,
            storage_id INTEGER,
            partition TEXT,
            error TEXT,
            occurred_at REAL NOT NULL
        );
        CREATE INDEX failures_asset_at ON materialization_failures (asset_key, occurred_at);
        CREATE TABLE asset_specs (
            asset_key TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            group_name TEXT,
            spec TEXT NOT NULL,
            retired_at REAL,
            registered_at REAL NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE check_results (
            asset_key TEXT NOT NULL,
            check_name TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT NOT NULL,
            check_values TEXT NOT NULL,
            evaluated_at REAL NOT NULL,
            PRIMARY KEY (asset_key, check_name)
        ) WITHOUT ROWID;
        CREATE TABLE asset_health (
            asset_key TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            signature TEXT NOT NULL,
            reasons TEXT NOT NULL,
            transitions INTEGER NOT NULL DEFAULT 0,
            evaluated_at REAL NOT NULL,
            changed_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE health_transitions (
            asset_key TEXT NOT NULL,
            transition INTEGER NOT NULL,
            status TEXT NOT NULL,
            previous_status TEXT NOT NULL,
            reasons TEXT NOT NULL,
            event_id TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (asset_key, transition)
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        2,
        "assets awaiting evaluation",
        """
        CREATE TABLE dirty_assets (
            asset_key TEXT PRIMARY KEY,
            since REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    # Every run event rewrote this second B-tree (an ended run moves in it): ~1 us of the ~33 us the worker
    # spends per event. What it served, the newest runs of one asset on a cache miss, reads that asset's
    # range of the primary key and sorts it (bounded by retention).
    Migration(3, "no run-time index on executions", "DROP INDEX IF EXISTS executions_at;"),
]


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """health.db at `settings.store_url(StoreName.HEALTH)`, migrated."""
    return Store.from_settings(settings, StoreName.HEALTH, MIGRATIONS, migrate=migrate)


_COLUMNS_JSON: dict[tuple[tuple[str, str], ...], str] = {}


def columns_json(columns: tuple[tuple[str, str], ...] | None) -> str | None:
    """The stored form of a column schema (memoised: an asset's schema rarely changes)."""
    if columns is None:
        return None
    text = _COLUMNS_JSON.get(columns)
    if text is None:
        text = json.dumps([[n, t] for n, t in columns])
        if len(_COLUMNS_JSON) < 10_000:
            _COLUMNS_JSON[columns] = text
    return text


def _columns(raw: str | None) -> tuple[tuple[str, str], ...] | None:
    return tuple((str(n), str(t)) for n, t in json.loads(raw)) if raw else None


def load_history(conn: Connection, key: str, limit: int) -> AssetHistory:
    """The asset's spec copy and its newest `limit` materializations, executions and failures."""
    history = AssetHistory(key=key)
    row = conn.execute("SELECT spec, retired_at, registered_at FROM asset_specs WHERE asset_key = ?", (key,)).fetchone()
    if row is not None:
        history.spec = AssetSpecData.model_validate_json(row["spec"])
        history.retired = row["retired_at"] is not None
        history.registered_at = row["registered_at"]
    history.materializations = [
        Materialization(r[0], r[1], r[2], r[3], _columns(r[4]), r[5], r[6])
        for r in reversed(
            conn.execute(
                "SELECT occurred_at, run_id, row_count, duration_s, column_schema, partition, storage_id "
                "FROM materializations WHERE asset_key = ? ORDER BY occurred_at DESC, id DESC LIMIT ?",
                (key, limit),
            ).fetchall()
        )
    ]
    history.executions = sorted(
        (
            Execution(r[0], r[1], r[2], r[3], r[4], r[5], r[6])
            for r in conn.execute(
                "SELECT run_id, status, started_at, ended_at, duration_s, error, partition FROM executions "
                "WHERE asset_key = ? ORDER BY COALESCE(ended_at, started_at) DESC LIMIT ?",
                (key, limit),
            )
        ),
        key=lambda e: e.at,
    )
    history.run_ids = {e.run_id for e in history.executions}
    history.failures = [
        Failure(r[0], r[1], r[2], r[3])
        for r in reversed(
            conn.execute(
                "SELECT occurred_at, run_id, error, partition FROM materialization_failures WHERE asset_key = ? "
                "ORDER BY occurred_at DESC LIMIT ?",
                (key, limit),
            ).fetchall()
        )
    ]
    return history


def all_asset_keys(conn: Connection) -> list[str]:
    """Every asset with a spec copy or any history."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT asset_key FROM asset_specs UNION SELECT asset_key FROM executions "
            "UNION SELECT asset_key FROM materializations UNION SELECT asset_key FROM materialization_failures"
        )
    ]


def prune(store: Store, retention_days: int, *, now: float | None = None) -> dict[str, int]:
    """Delete history older than `retention_days`, keeping each asset's latest materialization and run
    (so freshness and the last outcome survive a long pause); returns the rows deleted per table."""
    cutoff = (now or time.time()) - retention_days * 86400.0
    deleted: dict[str, int] = {}
    with store.write() as tx:
        deleted["materializations"] = tx.execute(
            "DELETE FROM materializations WHERE occurred_at < ? AND id NOT IN "
            "(SELECT MAX(id) FROM materializations GROUP BY asset_key)",
            (cutoff,),
        ).rowcount
        deleted["executions"] = tx.execute(
            "DELETE FROM executions WHERE COALESCE(ended_at, started_at, updated_at) < ? AND (asset_key, run_id) NOT IN "
            "(SELECT asset_key, run_id FROM executions e WHERE COALESCE(e.ended_at, e.started_at, e.updated_at) = "
            "(SELECT MAX(COALESCE(ended_at, started_at, updated_at)) FROM executions x WHERE x.asset_key = e.asset_key))",
            (cutoff,),
        ).rowcount
        deleted["materialization_failures"] = tx.execute(
            "DELETE FROM materialization_failures WHERE occurred_at < ?", (cutoff,)
        ).rowcount
        deleted["health_transitions"] = tx.execute("DELETE FROM health_transitions WHERE at < ?", (cutoff,)).rowcount
        deleted["processed_events"] = tx.execute("DELETE FROM processed_events WHERE processed_at < ?", (cutoff,)).rowcount
    return deleted
