"""monitor.db: alert states and incidents, their history, silences, the asset registry copy and the
notification outbox (written in the same transaction as the state change that produced it)."""

from __future__ import annotations

from pathlib import Path

from libs.common.settings import Settings, StoreName
from libs.common.store import Migration, Store, sqlite_path

MIGRATIONS = [
    Migration(
        1,
        "alerts",
        """
        -- Event-carried copy of each asset's spec (owners, team, group, tags) for routing.
        CREATE TABLE assets (
            asset_key TEXT PRIMARY KEY,
            owners TEXT NOT NULL DEFAULT '[]',
            group_name TEXT,
            tags TEXT NOT NULL DEFAULT '{}',
            downstream TEXT NOT NULL DEFAULT '[]',
            version INTEGER NOT NULL DEFAULT 0,
            retired INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
        -- The state machine's state per fingerprint (asset, check), as JSON.
        CREATE TABLE alert_states (
            fingerprint TEXT PRIMARY KEY,
            asset_key TEXT NOT NULL,
            check_name TEXT NOT NULL,
            state TEXT NOT NULL,
            alert_id INTEGER,
            next_due REAL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX alert_states_asset ON alert_states (asset_key);
        CREATE INDEX alert_states_due ON alert_states (next_due);
        -- One row per incident (a firing episode of a fingerprint): what the CLI lists and acks.
        CREATE TABLE alerts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fingerprint TEXT NOT NULL,
            incident INTEGER NOT NULL,
            asset_key TEXT NOT NULL,
            check_name TEXT NOT NULL,
            status TEXT NOT NULL,
            severity TEXT,
            summary TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '{}',
            owners TEXT NOT NULL DEFAULT '[]',
            downstream TEXT NOT NULL DEFAULT '[]',
            started_at REAL NOT NULL,
            resolved_at REAL,
            acked_by TEXT,
            acked_at REAL,
            ack_reason TEXT,
            silence_id TEXT,
            silenced_until REAL,
            notices INTEGER NOT NULL DEFAULT 0,
            last_notified_at REAL,
            updated_at REAL NOT NULL,
            UNIQUE (fingerprint, incident)
        );
        CREATE INDEX alerts_status ON alerts (status, severity);
        CREATE INDEX alerts_asset ON alerts (asset_key, status);
        CREATE TABLE alert_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alert_id INTEGER,
            fingerprint TEXT NOT NULL,
            at REAL NOT NULL,
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            reason TEXT,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX alert_history_alert ON alert_history (alert_id, at);
        CREATE INDEX alert_history_at ON alert_history (at);
        CREATE TABLE silences (
            id TEXT PRIMARY KEY,
            matchers TEXT NOT NULL,
            created_by TEXT NOT NULL,
            reason TEXT,
            created_at REAL NOT NULL,
            ends_at REAL NOT NULL,
            removed_at REAL,
            removed_by TEXT
        );
        CREATE INDEX silences_ends ON silences (ends_at);
        -- The delivery outbox: one row per (notification, receiver); the id is the webhook-id.
        CREATE TABLE notifications (
            id TEXT PRIMARY KEY,
            alert_id INTEGER,
            fingerprint TEXT NOT NULL,
            kind TEXT NOT NULL,
            receiver TEXT NOT NULL,
            content TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            lease_until REAL,
            last_attempt_at REAL,
            last_status INTEGER,
            last_error TEXT,
            delivered_at REAL
        );
        CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
        CREATE INDEX notifications_created ON notifications (created_at);
        """,
    ),
    Migration(
        2,
        "notification_order",
        """
        -- The sender keeps each receiver's notices about one alert in order (no resolve before its trigger).
        CREATE INDEX notifications_order ON notifications (fingerprint, receiver, status);
        """,
    ),
    Migration(
        3,
        "asset code location",
        """
        -- The code location that defines the asset, shown in every message.
        ALTER TABLE assets ADD COLUMN code_location TEXT;
        """,
    ),
    Migration(
        4,
        "incidents",
        """
        -- Alerts with one root cause (services/alerts/incidents.py): one notification per receiver each.
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            status TEXT NOT NULL,                       -- open, resolved, merged
            root_alert_id INTEGER,
            root_asset TEXT NOT NULL,
            root_check TEXT NOT NULL,
            severity TEXT,
            opened_at REAL NOT NULL,
            resolved_at REAL,
            acked_by TEXT,
            acked_at REAL,
            merged_into INTEGER,
            announced_at REAL,
            notified_severity TEXT,
            last_notified_at REAL,
            notices INTEGER NOT NULL DEFAULT 0,
            receivers TEXT NOT NULL DEFAULT '[]',           -- receivers told it fires
            announced_members TEXT NOT NULL DEFAULT '[]',   -- alert ids named in a notice so far
            created_at REAL NOT NULL,                       -- when this worker opened it (wall clock)
            announce_at REAL,                               -- its first notice waits until then
            updated_at REAL NOT NULL
        );
        CREATE INDEX incidents_status ON incidents (status, opened_at);
        CREATE INDEX incidents_announce ON incidents (announce_at);
        ALTER TABLE alerts ADD COLUMN incident_id INTEGER;
        ALTER TABLE alerts ADD COLUMN incident_reason TEXT;
        CREATE INDEX alerts_incident ON alerts (incident_id, status);
        -- Why a state announces nothing yet (lifecycle.AlertState.held): replayed history, or a backlog.
        ALTER TABLE alert_states ADD COLUMN held TEXT;
        CREATE INDEX alert_states_held ON alert_states (held);
        ALTER TABLE notifications ADD COLUMN incident_id INTEGER;
        -- The lineage, from asset specs (both directions) and health events' downstream lists.
        CREATE TABLE asset_edges (
            upstream TEXT NOT NULL,
            downstream TEXT NOT NULL,
            PRIMARY KEY (upstream, downstream)
        );
        CREATE INDEX asset_edges_down ON asset_edges (downstream);
        """,
    ),
    Migration(
        5,
        "alert code location",
        """
        -- The code location of the alert's asset as its notices named it (the asset's spec copy, else its
        -- health event), for the listings; NULL on alerts written before (the listings then show the
        -- asset's current one).
        ALTER TABLE alerts ADD COLUMN code_location TEXT;
        """,
    ),
]


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """Open (and migrate) monitor.db."""
    return Store.from_settings(settings, StoreName.MONITOR, MIGRATIONS, migrate=migrate)


def sqlite_path_of(settings: Settings) -> Path:
    """The file of monitor.db (to tell "no alerts yet" from an empty store without creating it)."""
    return sqlite_path(settings.store_url(StoreName.MONITOR))
