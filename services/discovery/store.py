"""The registry's store (metadata.db): schema migrations and how to open it."""

from __future__ import annotations

from libs.common.settings import Settings, StoreName
from libs.common.store import Migration, Store

MIGRATIONS = [
    Migration(
        1,
        "asset registry",
        """
        CREATE TABLE code_locations (
            name TEXT PRIMARY KEY,
            -- hash over the stored rows of its active assets: equal to a snapshot's hash = nothing to do
            fingerprint TEXT NOT NULL,
            snapshot_fingerprint TEXT,
            asset_count INTEGER NOT NULL,
            problems TEXT NOT NULL DEFAULT '[]',
            changed_at REAL NOT NULL
        );
        CREATE TABLE assets (
            key TEXT PRIMARY KEY,
            code_location TEXT,
            group_name TEXT,
            description TEXT,
            owners TEXT NOT NULL DEFAULT '[]',
            tags TEXT NOT NULL DEFAULT '{}',
            kinds TEXT NOT NULL DEFAULT '[]',
            metadata TEXT NOT NULL DEFAULT '{}',
            code_version TEXT,
            partitioning TEXT,
            source_file TEXT,
            source_line INTEGER,
            upstream TEXT NOT NULL DEFAULT '[]',
            freshness TEXT,
            checks TEXT NOT NULL DEFAULT '[]',
            fingerprint TEXT NOT NULL,
            row_hash TEXT NOT NULL,
            version INTEGER NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            retired_at REAL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX assets_location ON assets (code_location);
        CREATE INDEX assets_group ON assets (group_name);
        CREATE TABLE asset_versions (
            key TEXT NOT NULL,
            version INTEGER NOT NULL,
            change_type TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            spec TEXT NOT NULL,
            changes TEXT NOT NULL DEFAULT '{}',
            recorded_at REAL NOT NULL,
            retired_at REAL,
            PRIMARY KEY (key, version)
        ) WITHOUT ROWID;
        CREATE TABLE asset_deps (
            asset_key TEXT NOT NULL,
            upstream_key TEXT NOT NULL,
            PRIMARY KEY (asset_key, upstream_key)
        ) WITHOUT ROWID;
        CREATE INDEX asset_deps_upstream ON asset_deps (upstream_key, asset_key);
        """,
    ),
    Migration(
        2,
        "code location source",
        """
        -- Who registered the location last: dagster (the webserver's GraphQL), sensor (the publisher's
        -- catalog snapshot) or local (an in-process scan). With a webserver configured it wins.
        ALTER TABLE code_locations ADD COLUMN source TEXT NOT NULL DEFAULT 'local';
        """,
    ),
    Migration(
        3,
        "job names and repository",
        """
        -- Part of the definition from now on. NULL job_names: a row registered before they were recorded;
        -- the next snapshot fills both in without a new version (registry.register_snapshot: a field never
        -- recorded before is not a change of the asset). Clearing the locations' fingerprints makes that
        -- next snapshot compare every asset, even when nothing else changed.
        ALTER TABLE assets ADD COLUMN job_names TEXT;
        ALTER TABLE assets ADD COLUMN repository TEXT;
        UPDATE code_locations SET fingerprint = '', snapshot_fingerprint = NULL;
        """,
    ),
]


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """The metadata store at `settings.store_url(StoreName.METADATA)`, migrated unless `migrate=False`."""
    return Store.from_settings(settings, StoreName.METADATA, MIGRATIONS, migrate=migrate)
