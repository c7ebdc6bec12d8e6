"""Where the CLI finds the service stores, and how it opens them through each service's own store module."""

from __future__ import annotations

from pathlib import Path

from asset_manager.errors import CliError
from libs.common.settings import Settings, StoreName
from libs.common.store import Store, StoreError, sqlite_path


def store_file(settings: Settings, name: StoreName) -> Path:
    """The SQLite file of store `name`; a one-line CLI error for a store URL that is not a file."""
    try:
        return sqlite_path(settings.store_url(name))
    except StoreError as exc:
        raise CliError(str(exc)) from exc


def open_service_store(settings: Settings, name: StoreName, *, migrate: bool = True) -> Store:
    """Store `name` opened by the module of the service that owns it (its migrations, its schema)."""
    # Imported here: each store module brings its service's code, and most commands need one store at most.
    if name is StoreName.METADATA:
        from services.discovery.store import open_store as open_metadata

        return open_metadata(settings, migrate=migrate)
    if name is StoreName.HEALTH:
        from services.health.store import open_store as open_health

        return open_health(settings, migrate=migrate)
    from services.alerts.store import open_store as open_monitor

    return open_monitor(settings, migrate=migrate)


def code_schema_version(name: StoreName) -> int:
    """The newest migration of store `name` that this code knows."""
    from services.alerts import store as monitor_store
    from services.discovery import store as metadata_store
    from services.health import store as health_store

    module = {
        StoreName.METADATA: metadata_store,
        StoreName.HEALTH: health_store,
        StoreName.MONITOR: monitor_store,
    }[name]
    return max((m.version for m in module.MIGRATIONS), default=0)
