"""Wiring of the discovery worker: store, catalog handler, periodic rescan."""

from __future__ import annotations

from libs.common.events import CATALOG
from libs.common.settings import ServiceName
from libs.common.store import Store
from libs.common.worker import PeriodicJob, Worker, run_service
from services.discovery import metrics
from services.discovery.scan import Loader, definitions_loader
from services.discovery.service import WorkspaceSync, make_handler, rescan, sync_from_dagster
from services.discovery.settings import DiscoveryWorkerSettings
from services.discovery.store import open_store
from services.discovery.webserver import WebserverClient


def workspace_sync(settings: DiscoveryWorkerSettings, store: Store) -> WorkspaceSync | None:
    """The poller of the configured Dagster webserver (`dagster.url`), or None without one."""
    cfg = settings.dagster
    if not cfg.url:
        return None
    return WorkspaceSync(store, WebserverClient(cfg.url, timeout_s=cfg.timeout_s, retries=cfg.retries))


def build(
    settings: DiscoveryWorkerSettings, *, port: int | None = None, loader: Loader | None = None
) -> Worker:
    """The discovery worker: consumes the catalog stream, rescans periodically, publishes asset changes."""
    store = open_store(settings)
    metrics.refresh_gauges(store.connection())
    cfg = settings.discovery
    loader = loader or definitions_loader(cfg.definitions)
    sync = workspace_sync(settings, store)
    defer = sync is not None  # with a webserver, what it reports about a location wins (README)
    jobs = []
    if sync is not None:
        jobs.append(
            PeriodicJob(
                name="poll_dagster",
                func=lambda: sync_from_dagster(sync),
                interval_s=cfg.poll_interval_s,
                run_at_start=True,
            )
        )
    return Worker(
        service=ServiceName.DISCOVERY,
        settings=settings,
        store=store,
        streams=[CATALOG],
        handler=make_handler(store, settings.dagster.code_location, loader=loader, defer=defer, sync=sync),
        jobs=[
            *jobs,
            PeriodicJob(
                name="rescan",
                func=lambda: rescan(
                    store, settings.dagster.code_location, trigger="rescan", loader=loader, defer=defer
                ),
                interval_s=cfg.rescan_interval_s,
                run_at_start=cfg.rescan_at_start,
            ),
            PeriodicJob(
                name="prune_processed",
                func=lambda: store.prune_processed(cfg.processed_retention_days * 86400.0),
                interval_s=3600,
            ),
        ],
        port=port,
    )


def main() -> int:
    """Entry point of `python -m services.discovery`."""
    return run_service(ServiceName.DISCOVERY, DiscoveryWorkerSettings, build)
