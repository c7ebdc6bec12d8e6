"""health.db: execution history per asset, the spec copy of each asset, the latest check results and
health per asset, the transitions published and the assets awaiting evaluation.

This module owns the database: its schema, its migrations and every SQL statement run against it. The
service writes through `write_facts` / `write_decisions` / the dirty-set functions; the CLI reads through
`services.health.queries`, which calls the `read_*` functions here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from libs.common.events import AssetSpecData, CheckName, CheckResult, HealthStatus
from libs.common.settings import Settings, StoreName
from libs.common.sql import Connection
from libs.common.store import Migration, Store
from services.health.automation import AutomationObject, from_row, to_row
from services.health.decide import Decision, HealthState
from services.health.model import AssetHistory, Execution, Failure, Materialization, UpstreamState
from services.health.record import Facts

# Redeliveries are recognised by `Store.claim_new` (processed_events); the event_id columns are kept for
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
    # due_at: when the clock alone can next change an asset's checks (`evaluators.next_change`), so that
    # the periodic pass evaluates the assets that are due, not all of them (NULL: only an event can).
    # last_materialized_at: as of the last evaluation, for listings (a GROUP BY over every materialization
    # took seconds at 50,000 assets).
    Migration(
        4,
        "evaluation due, last materialization",
        """
        ALTER TABLE asset_health ADD COLUMN due_at REAL;
        ALTER TABLE asset_health ADD COLUMN last_materialized_at REAL;
        """,
    ),
    # failed_assets: of a failed run, the assets that failed on their own (JSON list; NULL: not said), so
    # that an asset the run only skipped is told apart from one that failed.
    Migration(5, "own failures of a failed run", "ALTER TABLE executions ADD COLUMN failed_assets TEXT;"),
    # replayed: the asset's last evaluation was made during a catch-up, as of its history's time; it is
    # evaluated again on the wall clock (and its state confirmed to the alerts) once caught up.
    Migration(
        6,
        "replayed evaluations",
        """
        ALTER TABLE asset_health ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX asset_health_replayed ON asset_health (replayed);
        """,
    ),
    # Automation objects (sensors, schedules, daemons, publishers: services/health/automation.py): the
    # folded record of their ticks or heartbeats (`state`, JSON), and their health as for assets.
    Migration(
        7,
        "automation objects",
        """
        CREATE TABLE automation_objects (
            object_key TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            code_location TEXT,
            state TEXT NOT NULL,
            last_at REAL,
            status TEXT NOT NULL DEFAULT 'UNKNOWN',
            signature TEXT NOT NULL DEFAULT 'UNKNOWN|',
            checks TEXT NOT NULL DEFAULT '[]',
            reasons TEXT NOT NULL DEFAULT '[]',
            transitions INTEGER NOT NULL DEFAULT 0,
            evaluated_at REAL,
            changed_at REAL,
            due_at REAL,
            replayed INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX automation_objects_due ON automation_objects (due_at);
        """,
    ),
    # results_epoch: what the asset's stored check results were computed with (`service.results_epoch`: the
    # evaluation code and the health settings). While it holds and no fact about the asset has been recorded
    # since (retention clears it), the checks that depend on the history alone are read back
    # (`load_reusable`) instead of recomputed when its history is not in the cache (a periodic pass over
    # 50,000 assets, the first one after a start included).
    # dirty_assets.facts: 1 when facts about the asset were recorded since its last evaluation, 0 when it only
    # awaits a confirmation on the wall clock after a catch-up (its history, and so those results, unchanged).
    Migration(
        8,
        "reusable check results",
        """
        ALTER TABLE asset_health ADD COLUMN results_epoch TEXT;
        ALTER TABLE dirty_assets ADD COLUMN facts INTEGER NOT NULL DEFAULT 1;
        """,
    ),
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


@functools.lru_cache(maxsize=4096)
def _columns(raw: str | None) -> tuple[tuple[str, str], ...] | None:
    """A stored column schema read back; memoised (the same text on most of an asset's rows: parsing it per
    row was half of `load_history`'s time), and the result is immutable."""
    return tuple((str(n), str(t)) for n, t in json.loads(raw)) if raw else None


@functools.lru_cache(maxsize=256)
def failed_assets_json(keys: tuple[str, ...] | None) -> str | None:
    """The stored form of `Execution.failed_assets` (NULL: not said); memoised, as every asset of a run
    carries the same."""
    return json.dumps(list(keys)) if keys is not None else None


def _failed_assets(raw: str | None) -> tuple[str, ...] | None:
    return tuple(str(k) for k in json.loads(raw)) if raw is not None else None


# -- the service's reads ---------------------------------------------------------------------------------


def load_history(
    conn: Connection, key: str, limit: int, *, materializations: int | None = None
) -> AssetHistory:
    """The asset's spec copy and its newest `limit` materializations (or `materializations` of them),
    executions and failures."""
    history = AssetHistory(key=key)
    row = conn.execute(
        "SELECT spec, version, retired_at, registered_at FROM asset_specs WHERE asset_key = ?", (key,)
    ).fetchone()
    if row is not None:
        history.spec = AssetSpecData.model_validate_json(row["spec"])
        history.spec_version = int(row["version"])
        history.retired = row["retired_at"] is not None
        history.registered_at = row["registered_at"]
    rows = conn.execute(
        "SELECT occurred_at, run_id, row_count, duration_s, column_schema, partition, storage_id "
        "FROM materializations WHERE asset_key = ? ORDER BY occurred_at DESC, id DESC LIMIT ?",
        (key, limit if materializations is None else materializations),
    ).fetchall()
    rows.reverse()
    history.materializations = [
        Materialization(at, run_id, rows_, duration, _columns(schema) if schema else None, partition, storage)
        for at, run_id, rows_, duration, schema, partition, storage in rows
    ]
    history.executions = sorted(
        (
            Execution(r[0], r[1], r[2], r[3], r[4], r[5], r[6], _failed_assets(r[7]))
            for r in conn.execute(
                "SELECT run_id, status, started_at, ended_at, duration_s, error, partition, failed_assets "
                "FROM executions WHERE asset_key = ? ORDER BY COALESCE(ended_at, started_at) DESC LIMIT ?",
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
                "SELECT occurred_at, run_id, error, partition FROM materialization_failures "
                "WHERE asset_key = ? ORDER BY occurred_at DESC LIMIT ?",
                (key, limit),
            ).fetchall()
        )
    ]
    return history


def without_history(conn: Connection, keys: Sequence[str]) -> list[str]:
    """Of `keys`, the assets of which health.db holds nothing `load_history` would read (no spec copy, no
    materialization, run or failure): their history is empty."""
    unknown: list[str] = []
    for chunk in _chunks(keys):
        marks = ", ".join("(?)" for _ in chunk)
        unknown += [
            r[0]
            for r in conn.execute(
                f"WITH q(k) AS (VALUES {marks}) SELECT k FROM q "
                "WHERE NOT EXISTS (SELECT 1 FROM asset_specs WHERE asset_key = q.k) "
                "AND NOT EXISTS (SELECT 1 FROM executions WHERE asset_key = q.k) "
                "AND NOT EXISTS (SELECT 1 FROM materializations WHERE asset_key = q.k) "
                "AND NOT EXISTS (SELECT 1 FROM materialization_failures WHERE asset_key = q.k)",
                list(chunk),
            )
        ]
    return unknown


def load_state(conn: Connection, key: str) -> HealthState:
    """The asset's last evaluation as the transition remembers it (a fresh state if never evaluated)."""
    row = conn.execute(
        "SELECT status, signature, transitions, replayed FROM asset_health WHERE asset_key = ?", (key,)
    ).fetchone()
    if row is None:
        return HealthState()
    outcomes = dict(
        conn.execute("SELECT check_name, outcome FROM check_results WHERE asset_key = ?", (key,)).fetchall()
    )
    return HealthState(HealthStatus(row[0]), row[1], row[2], outcomes, stored=True, replayed=bool(row[3]))


def load_upstream(conn: Connection, key: str) -> UpstreamState:
    """What a downstream asset's dependency check reads of `key` (as `load_history` and `load_state` would
    give it: spec copy, health and execution and freshness outcomes, newest materialization), in one
    statement and without reading its history."""
    row = conn.execute(
        "SELECT s.asset_key, s.retired_at, h.status, ce.outcome, cf.outcome, m.occurred_at, m.run_id "
        "FROM (SELECT ? AS k) q "
        "LEFT JOIN asset_specs s ON s.asset_key = q.k "
        "LEFT JOIN asset_health h ON h.asset_key = q.k "
        "LEFT JOIN check_results ce ON ce.asset_key = h.asset_key AND ce.check_name = ? "
        "LEFT JOIN check_results cf ON cf.asset_key = h.asset_key AND cf.check_name = ? "
        "LEFT JOIN (SELECT occurred_at, run_id FROM materializations WHERE asset_key = ? "
        "ORDER BY occurred_at DESC, id DESC LIMIT 1) m ON 1 = 1",
        (key, CheckName.EXECUTION, CheckName.FRESHNESS, key),
    ).fetchone()
    spec, retired_at, status, execution, freshness, last_at, last_run = row
    return UpstreamState(
        key=key,
        registered=spec is not None,
        retired=retired_at is not None,
        status=HealthStatus(status) if status is not None else HealthStatus.UNKNOWN,
        execution_failed=execution == "error",
        stale=(freshness or "passed") != "passed",
        last_materialized_at=last_at,
        last_run_id=last_run,
    )


def load_reusable(conn: Connection, key: str, epoch: str, checks: Iterable[str]) -> dict[str, CheckResult]:
    """The stored results of `checks` of the asset, if its last evaluation was made under `epoch` (the same
    evaluation code and settings) and no fact about it has been recorded since; else nothing."""
    wanted = list(checks)
    marks = ", ".join("?" for _ in wanted)
    rows = conn.execute(
        "SELECT c.check_name, c.outcome, c.reason, c.check_values FROM asset_health h "
        "JOIN check_results c ON c.asset_key = h.asset_key "
        f"WHERE h.asset_key = ? AND h.results_epoch = ? AND c.check_name IN ({marks}) "
        "AND NOT EXISTS (SELECT 1 FROM dirty_assets d WHERE d.asset_key = h.asset_key AND d.facts = 1)",
        (key, epoch, *wanted),
    ).fetchall()
    return {r[0]: CheckResult(check=r[0], outcome=r[1], reason=r[2], values=json.loads(r[3])) for r in rows}


def replayed_asset_keys(conn: Connection) -> list[str]:
    """The assets whose last evaluation was made during a catch-up."""
    return [r[0] for r in conn.execute("SELECT asset_key FROM asset_health WHERE replayed = 1")]


def all_asset_keys(conn: Connection) -> list[str]:
    """Every asset with a spec copy or any history: an asset with history has been evaluated (a health
    row) or awaits its evaluation (dirty)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT asset_key FROM asset_specs UNION SELECT asset_key FROM asset_health "
            "UNION SELECT asset_key FROM dirty_assets"
        )
    ]


def due_asset_keys(conn: Connection, now: float) -> list[str]:
    """The assets whose checks the clock may have changed by `now`, and those never evaluated."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT asset_key FROM asset_health WHERE due_at <= ? "
            "UNION SELECT s.asset_key FROM asset_specs s WHERE NOT EXISTS "
            "(SELECT 1 FROM asset_health h WHERE h.asset_key = s.asset_key) "
            "UNION SELECT asset_key FROM dirty_assets",
            (now,),
        )
    ]


def due_by_clock(conn: Connection, now: float) -> set[str]:
    """Of `due_asset_keys`, those due by the clock or never evaluated (not merely awaiting evaluation)."""
    return {
        r[0]
        for r in conn.execute(
            "SELECT asset_key FROM asset_health WHERE due_at <= ? "
            "UNION SELECT s.asset_key FROM asset_specs s WHERE NOT EXISTS "
            "(SELECT 1 FROM asset_health h WHERE h.asset_key = s.asset_key)",
            (now,),
        )
    }


# -- the service's writes --------------------------------------------------------------------------------


def write_facts(conn: Connection, facts: Facts, now: float) -> None:
    """Insert a batch's facts (`record.facts_of`); redeliveries were filtered out by `Store.claim_new`."""
    if facts.specs:
        # An older version arriving late never replaces a newer one.
        conn.executemany(
            "INSERT INTO asset_specs (asset_key, version, group_name, spec, retired_at, registered_at, "
            "updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (asset_key) DO UPDATE SET version = excluded.version, "
            "group_name = excluded.group_name, spec = excluded.spec, retired_at = excluded.retired_at, "
            "updated_at = excluded.updated_at WHERE excluded.version >= asset_specs.version",
            [
                (s.key, s.version, s.spec.group, s.spec.model_dump_json(), s.retired_at, s.at, now)
                for s in facts.specs
            ],
        )
    if facts.runs:
        # A late run.started never downgrades a finished run; known timings are kept.
        conn.executemany(
            "INSERT INTO executions (asset_key, run_id, job_name, status, started_at, ended_at, duration_s, "
            "error, partition, failed_assets, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (asset_key, run_id) DO UPDATE SET "
            "status = CASE WHEN excluded.status = 'STARTED' THEN executions.status ELSE excluded.status END, "
            "started_at = COALESCE(executions.started_at, excluded.started_at), "
            "ended_at = COALESCE(excluded.ended_at, executions.ended_at), "
            "duration_s = COALESCE(excluded.duration_s, executions.duration_s), "
            "error = COALESCE(excluded.error, executions.error), "
            "failed_assets = COALESCE(excluded.failed_assets, executions.failed_assets), "
            "updated_at = excluded.updated_at",
            [
                (
                    r.key,
                    e.run_id,
                    r.job_name,
                    e.status,
                    e.started_at,
                    e.ended_at,
                    e.duration_s,
                    e.error,
                    e.partition,
                    failed_assets_json(e.failed_assets),
                    now,
                )
                for r in facts.runs
                for e in (r.execution,)
            ],
        )
    if facts.materializations:
        conn.executemany(
            "INSERT INTO materializations (event_id, asset_key, run_id, storage_id, partition, row_count, "
            "duration_s, column_schema, occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    m.event_id,
                    m.key,
                    x.run_id,
                    x.storage_id,
                    x.partition,
                    x.row_count,
                    x.duration_s,
                    columns_json(x.columns),
                    x.at,
                )
                for m in facts.materializations
                for x in (m.materialization,)
            ],
        )
    if facts.failures:
        conn.executemany(
            "INSERT INTO materialization_failures (event_id, asset_key, run_id, storage_id, partition, "
            "error, "
            "occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (f.event_id, f.key, x.run_id, f.storage_id, x.partition, x.error, x.at)
                for f in facts.failures
                for x in (f.failure,)
            ],
        )


def write_decision(
    conn: Connection,
    d: Decision,
    now: float,
    due_at: float | None,
    last_materialized_at: float | None,
    epoch: str | None = None,
) -> None:
    """A decision's check results and health row (with `due_at`, when the clock may next change it, and the
    `epoch` of the code and settings that made it), and the transition it published."""
    conn.executemany(
        "INSERT INTO check_results (asset_key, check_name, outcome, reason, check_values, evaluated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (asset_key, check_name) DO UPDATE SET outcome = "
        "excluded.outcome, "
        "reason = excluded.reason, check_values = excluded.check_values, evaluated_at = "
        "excluded.evaluated_at",
        [(d.key, r.check, r.outcome, r.reason, json.dumps(r.values), now) for r in d.results],
    )
    conn.execute(
        "INSERT INTO asset_health (asset_key, status, signature, reasons, transitions, evaluated_at, "
        "changed_at, due_at, last_materialized_at, replayed, results_epoch) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (asset_key) DO UPDATE SET "
        "status = excluded.status, signature = excluded.signature, reasons = excluded.reasons, "
        "transitions = excluded.transitions, evaluated_at = excluded.evaluated_at, "
        "changed_at = CASE WHEN excluded.signature = asset_health.signature THEN asset_health.changed_at "
        "ELSE excluded.changed_at END, due_at = excluded.due_at, last_materialized_at = "
        "excluded.last_materialized_at, replayed = excluded.replayed, results_epoch = excluded.results_epoch",
        (
            d.key,
            str(d.status),
            d.signature,
            json.dumps(d.reasons),
            d.state.transitions,
            now,
            now,
            due_at,
            last_materialized_at,
            int(d.state.replayed),
            epoch,
        ),
    )
    if d.event is not None:
        conn.execute(
            "INSERT OR IGNORE INTO health_transitions (asset_key, transition, status, previous_status, "
            "reasons, "
            "event_id, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                d.key,
                d.state.transitions,
                str(d.status),
                str(d.event.data.previous_status),
                json.dumps(d.reasons),
                d.event.id,
                now,
            ),
        )


# -- assets awaiting evaluation (deferred under a backlog, durable across a restart) ------------------


def dirty_assets(conn: Connection) -> dict[str, bool]:
    """The assets awaiting evaluation: True for new facts, False for a confirmation only (`mark_dirty`)."""
    return {r[0]: bool(r[1]) for r in conn.execute("SELECT asset_key, facts FROM dirty_assets").fetchall()}


def mark_dirty(conn: Connection, keys: Iterable[str], now: float, *, facts: bool = True) -> None:
    """Mark `keys` as awaiting evaluation: for new `facts` about them, or (False) to be judged again only."""
    conn.executemany(
        "INSERT INTO dirty_assets (asset_key, since, facts) VALUES (?, ?, ?) ON CONFLICT (asset_key) "
        "DO UPDATE SET facts = CASE WHEN excluded.facts = 1 THEN 1 ELSE dirty_assets.facts END",
        [(k, now, int(facts)) for k in keys],
    )


def clear_dirty(conn: Connection, keys: Iterable[str] | None = None) -> None:
    """Forget `keys` (every asset when None) as awaiting evaluation."""
    if keys is None:
        conn.execute("DELETE FROM dirty_assets")
    else:
        conn.executemany("DELETE FROM dirty_assets WHERE asset_key = ?", [(k,) for k in keys])


# -- maintenance ---------------------------------------------------------------------------------------------


def prune(store: Store, retention_days: int, *, now: float) -> dict[str, int]:
    """Delete history older than `retention_days`, keeping each asset's latest materialization and run
    (so freshness and the last outcome survive a long pause); returns the rows deleted per table."""
    cutoff = now - retention_days * 86400.0
    deleted: dict[str, int] = {}
    with store.write() as tx:
        # The stored results of the assets whose history this shortens no longer hold (`load_reusable`).
        tx.execute(
            "UPDATE asset_health SET results_epoch = NULL WHERE results_epoch IS NOT NULL AND asset_key IN ("
            "SELECT asset_key FROM materializations WHERE occurred_at < ? "
            "UNION SELECT asset_key FROM executions WHERE COALESCE(ended_at, started_at, updated_at) < ? "
            "UNION SELECT asset_key FROM materialization_failures WHERE occurred_at < ?)",
            (cutoff, cutoff, cutoff),
        )
        deleted["materializations"] = tx.execute(
            "DELETE FROM materializations WHERE occurred_at < ? AND id NOT IN "
            "(SELECT MAX(id) FROM materializations GROUP BY asset_key)",
            (cutoff,),
        ).rowcount
        deleted["executions"] = tx.execute(
            "DELETE FROM executions WHERE COALESCE(ended_at, started_at, updated_at) < ? AND (asset_key, "
            "run_id) NOT IN "
            "(SELECT asset_key, run_id FROM executions e WHERE COALESCE(e.ended_at, e.started_at, "
            "e.updated_at) = "
            "(SELECT MAX(COALESCE(ended_at, started_at, updated_at)) FROM executions x WHERE x.asset_key = "
            "e.asset_key))",
            (cutoff,),
        ).rowcount
        deleted["materialization_failures"] = tx.execute(
            "DELETE FROM materialization_failures WHERE occurred_at < ?", (cutoff,)
        ).rowcount
        deleted["health_transitions"] = tx.execute(
            "DELETE FROM health_transitions WHERE at < ?", (cutoff,)
        ).rowcount
        deleted["processed_events"] = tx.execute(
            "DELETE FROM processed_events WHERE processed_at < ?", (cutoff,)
        ).rowcount
    return deleted


def release_memory(conn: Connection) -> None:
    """Free this connection's page cache. Each thread has a connection with a page cache of its own (16 MiB):
    the periodic jobs run on a pool of threads, and at 50,000 assets their caches alone would add over
    100 MB; a job releases its thread's at its end (the consume loop's stays warm)."""
    conn.execute("PRAGMA shrink_memory")


def status_counts(conn: Connection) -> list[tuple[str, str, int]]:
    """(group, status, assets) for every group and status present."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT COALESCE(s.group_name, ''), h.status, COUNT(*) FROM asset_health h "
            "LEFT JOIN asset_specs s ON s.asset_key = h.asset_key GROUP BY 1, 2"
        )
    ]


def unhealthy_assets(conn: Connection) -> list[tuple[str, str, str]]:
    """(asset, group, status) of every asset neither HEALTHY nor UNKNOWN."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT h.asset_key, COALESCE(s.group_name, ''), h.status FROM asset_health h "
            "LEFT JOIN asset_specs s ON s.asset_key = h.asset_key WHERE h.status NOT IN ('HEALTHY', "
            "'UNKNOWN')"
        )
    ]


# -- the CLI's reads (through services.health.queries) -----------------------------------------------------


def _where(key: str | None, statuses: Sequence[str] | None, alias: str = "h") -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if key is not None:
        clauses.append(f"{alias}.asset_key = ?")
        args.append(key)
    if statuses is not None:
        clauses.append(f"{alias}.status IN ({', '.join('?' for _ in statuses)})")
        args.extend(statuses)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def read_health(conn: Connection, key: str | None = None, statuses: Sequence[str] | None = None) -> list[Any]:
    """asset_health rows (asset_key, status, reasons, evaluated_at, changed_at, transitions, group_name,
    spec) of one asset, of some statuses, or of every asset."""
    where, args = _where(key, statuses)
    return conn.execute(
        "SELECT h.asset_key, h.status, h.reasons, h.evaluated_at, h.changed_at, h.transitions, "
        "s.group_name, s.spec "
        f"FROM asset_health h LEFT JOIN asset_specs s ON s.asset_key = h.asset_key {where}",
        args,
    ).fetchall()


def read_statuses(conn: Connection, key: str | None = None) -> list[Any]:
    """(asset_key, status, reasons, evaluated_at) of one or every evaluated asset: what listings show."""
    if key is not None:
        return conn.execute(
            "SELECT asset_key, status, reasons, evaluated_at FROM asset_health WHERE asset_key = ?", (key,)
        ).fetchall()
    return conn.execute("SELECT asset_key, status, reasons, evaluated_at FROM asset_health").fetchall()


def read_specs(conn: Connection) -> list[str]:
    """Every asset's spec copy (JSON text)."""
    return [r[0] for r in conn.execute("SELECT spec FROM asset_specs")]


def read_status_by_asset(conn: Connection) -> list[tuple[str, str]]:
    """(asset_key, status) of every evaluated asset: all a listing of the whole catalog shows of health."""
    return [(r[0], r[1]) for r in conn.execute("SELECT asset_key, status FROM asset_health")]


def read_checks(conn: Connection, key: str | None = None, statuses: Sequence[str] | None = None) -> list[Any]:
    """check_results rows (asset_key, check_name, outcome, reason, check_values) for the same selection as
    `read_health`."""
    if key is None and statuses is None:
        return conn.execute(
            "SELECT asset_key, check_name, outcome, reason, check_values FROM check_results"
        ).fetchall()
    if statuses is None:
        return conn.execute(
            "SELECT asset_key, check_name, outcome, reason, check_values FROM check_results WHERE asset_key "
            "= ?",
            (key,),
        ).fetchall()
    where, args = _where(key, statuses)
    return conn.execute(
        "SELECT c.asset_key, c.check_name, c.outcome, c.reason, c.check_values FROM asset_health h "
        f"JOIN check_results c ON c.asset_key = h.asset_key {where}",
        args,
    ).fetchall()


def read_health_keys(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT asset_key FROM asset_health")]


def read_materializations(conn: Connection, key: str, limit: int) -> list[Any]:
    return conn.execute(
        "SELECT occurred_at, run_id, row_count, duration_s, partition, column_schema FROM materializations "
        "WHERE asset_key = ? ORDER BY occurred_at DESC LIMIT ?",
        (key, limit),
    ).fetchall()


def read_failures(conn: Connection, key: str, limit: int) -> list[Any]:
    return conn.execute(
        "SELECT occurred_at, run_id, partition, error FROM materialization_failures WHERE asset_key = ? "
        "ORDER BY occurred_at DESC LIMIT ?",
        (key, limit),
    ).fetchall()


def read_executions(conn: Connection, key: str, limit: int) -> list[Any]:
    return conn.execute(
        "SELECT run_id, status, duration_s, partition, error, COALESCE(ended_at, started_at, updated_at) AS "
        "at "
        "FROM executions WHERE asset_key = ? ORDER BY at DESC LIMIT ?",
        (key, limit),
    ).fetchall()


def read_last_materializations(conn: Connection, key: str | None = None) -> list[tuple[str, float]]:
    """(asset_key, time of its latest materialization) of one asset or every asset, as of their last
    evaluation (one asset: from its history)."""
    if key is None:
        rows = conn.execute(
            "SELECT asset_key, last_materialized_at FROM asset_health WHERE last_materialized_at IS NOT NULL"
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT asset_key, MAX(occurred_at) FROM materializations WHERE asset_key = ?", (key,)
        ).fetchall()
    return [(str(r[0]), float(r[1])) for r in rows if r[1] is not None]


# -- automation objects (services/health/automation.py) ---------------------------------------------------


def load_automation(
    conn: Connection, keys: Iterable[str] | None = None, kind: str | None = None
) -> dict[str, tuple[AutomationObject, HealthState]]:
    """The stored automation objects with their health state: of `keys`, of one `kind`, or all."""
    sql = "SELECT object_key, state, status, signature, checks, transitions, replayed FROM automation_objects"
    if keys is not None:
        wanted = list(keys)
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)
        rows = conn.execute(f"{sql} WHERE object_key IN ({marks})", wanted).fetchall()
    elif kind is not None:
        rows = conn.execute(f"{sql} WHERE kind = ?", (kind,)).fetchall()
    else:
        rows = conn.execute(sql).fetchall()
    found: dict[str, tuple[AutomationObject, HealthState]] = {}
    for r in rows:
        checks = json.loads(r[4])  # the outcomes only: no model per check on this path (per batch)
        state = HealthState(
            HealthStatus(r[2]),
            r[3],
            int(r[5]),
            {c["check"]: c["outcome"] for c in checks},
            stored=bool(checks),
            replayed=bool(r[6]),
        )
        found[r[0]] = (from_row(json.loads(r[1])), state)
    return found


def write_automation_objects(conn: Connection, objects: Iterable[AutomationObject], now: float) -> None:
    """The folded records of objects a batch changed (`write_automation_decision` writes their health)."""
    conn.executemany(
        "INSERT INTO automation_objects (object_key, kind, code_location, state, last_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (object_key) DO UPDATE SET "
        "code_location = excluded.code_location, state = excluded.state, last_at = excluded.last_at, "
        "updated_at = excluded.updated_at",
        [(o.key, o.kind, o.code_location, json.dumps(to_row(o)), o.last_at, now) for o in objects],
    )


def write_automation_decision(conn: Connection, d: Decision, now: float, due_at: float | None) -> None:
    """An automation object's evaluation: its checks, status, reasons, when the clock may next change it."""
    conn.execute(
        "UPDATE automation_objects SET status = ?, signature = ?, checks = ?, reasons = ?, transitions = ?, "
        "evaluated_at = ?, changed_at = CASE WHEN signature = ? AND changed_at IS NOT NULL THEN changed_at "
        "ELSE ? END, due_at = ?, replayed = ? WHERE object_key = ?",
        (
            str(d.status),
            d.signature,
            json.dumps([r.model_dump(mode="json") for r in d.results]),
            json.dumps(d.reasons),
            d.state.transitions,
            now,
            d.signature,
            now,
            due_at,
            int(d.state.replayed),
            d.key,
        ),
    )


def due_automation_keys(conn: Connection, now: float | None, *, jobs: bool = True) -> list[str]:
    """The automation objects whose checks the clock may have changed by `now` (every one when None), and
    those evaluated during a replay (judged again on the wall clock); op jobs only with `jobs` (they follow
    the runs' catch-up, not the automation stream's)."""
    only = "" if jobs else " AND kind <> 'job'"
    if now is None:
        return [r[0] for r in conn.execute(f"SELECT object_key FROM automation_objects WHERE 1 = 1{only}")]
    return [
        r[0]
        for r in conn.execute(
            "SELECT object_key FROM automation_objects "
            f"WHERE (due_at <= ? OR replayed = 1 OR evaluated_at IS NULL){only}",
            (now,),
        )
    ]


def replayed_automation_keys(conn: Connection, *, jobs: bool = False) -> list[str]:
    """The objects last judged during a replay: the automation stream's, or with `jobs` the op jobs (judged in
    step with the runs' catch-up)."""
    op = "=" if jobs else "<>"
    return [
        r[0]
        for r in conn.execute(
            f"SELECT object_key FROM automation_objects WHERE replayed = 1 AND kind {op} 'job'"
        )
    ]


def read_automation(conn: Connection) -> list[Any]:
    """(object_key, kind, code_location, status, reasons, checks, last_at, evaluated_at, changed_at, state)
    of every automation object: what `asset-manager automation-health` lists."""
    return conn.execute(
        "SELECT object_key, kind, code_location, status, reasons, checks, last_at, evaluated_at, changed_at, "
        "state FROM automation_objects"
    ).fetchall()


def publisher_heartbeats(conn: Connection) -> list[tuple[str, float]]:
    """(code location, time of its publisher's last heartbeat) of every publisher on record."""
    return [
        (str(r[0] or ""), float(r[1]))
        for r in conn.execute(
            "SELECT code_location, last_at FROM automation_objects "
            "WHERE kind = 'publisher' AND last_at IS NOT NULL"
        )
    ]


# -- removal of simulated assets (`asset-manager simulate --clean`) ------------------------------------------

# Every table with a row per asset (or per asset and something): what an asset leaves behind in health.db.
_ASSET_TABLES = (
    "executions",
    "materializations",
    "materialization_failures",
    "asset_specs",
    "check_results",
    "asset_health",
    "health_transitions",
    "dirty_assets",
)


def _chunks(keys: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def keys_under(conn: Connection, prefix: str) -> list[str]:
    """Every asset key of any health.db table that starts with `prefix` (compared as text, no pattern)."""
    union = " UNION ".join(
        f"SELECT asset_key FROM {t} WHERE substr(asset_key, 1, ?) = ?" for t in _ASSET_TABLES
    )
    return sorted(str(r[0]) for r in conn.execute(union, [len(prefix), prefix] * len(_ASSET_TABLES)))


def runs_of(conn: Connection, keys: Sequence[str]) -> list[tuple[str, str]]:
    """(asset key, run id) of every run, materialization and failure recorded for `keys`."""
    found: set[tuple[str, str]] = set()
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        for table in ("executions", "materializations", "materialization_failures"):
            found.update(
                (str(r[0]), str(r[1]))
                for r in conn.execute(
                    f"SELECT asset_key, run_id FROM {table} WHERE asset_key IN ({marks})", chunk
                )
            )
    return sorted(found)


def keys_with_spec(conn: Connection, keys: Sequence[str]) -> list[str]:
    """Those of `keys` that have a spec copy (a catalog's asset, not one known from events alone)."""
    found: list[str] = []
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        found.extend(
            str(r[0])
            for r in conn.execute(f"SELECT asset_key FROM asset_specs WHERE asset_key IN ({marks})", chunk)
        )
    return sorted(found)


def delete_assets(conn: Connection, keys: Sequence[str]) -> dict[str, int]:
    """Delete every row about `keys` (history, spec copies, check results, health, transitions, dirty marks)
    and their events still waiting in the outbox, in the caller's transaction; rows deleted per table."""
    wanted = set(keys)
    deleted = dict.fromkeys(_ASSET_TABLES, 0)
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        for table in _ASSET_TABLES:
            deleted[table] += conn.execute(
                f"DELETE FROM {table} WHERE asset_key IN ({marks})", chunk
            ).rowcount
    # Outbox payloads are events; those about one of `keys` (health.changed) must not be published later.
    staged = [
        int(r[0])
        for r in conn.execute("SELECT seq, payload FROM event_outbox").fetchall()
        if json.loads(r[1]).get("data", {}).get("asset_key") in wanted
    ]
    conn.executemany("DELETE FROM event_outbox WHERE seq = ?", [(seq,) for seq in staged])
    deleted["event_outbox"] = len(staged)
    return deleted
