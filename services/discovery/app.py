"""Wiring of the discovery worker: store, catalog handler, periodic rescan."""

from __future__ import annotations

from libs.common.events import CATALOG
from libs.common.settings import ServiceName
from libs.common.worker import PeriodicJob, Worker, run_service
from services.discovery import metrics
from services.discovery.scan import Loader, definitions_loader
from services.discovery.service import make_handler, rescan
from services.discovery.settings import DiscoveryWorkerSettings
from services.discovery.store import open_store


def build(settings: DiscoveryWorkerSettings, *, port: int | None = None, loader: Loader | None = None) -> Worker:
    """The discovery worker: consumes the catalog stream, rescans periodically, publishes asset changes."""
    store = open_store(settings)
    metrics.refresh_gauges(store.connection())
    cfg = settings.discovery
    loader = loader or definitions_loader(cfg.definitions)
    return Worker(
        service=ServiceName.DISCOVERY,
        settings=settings,
        store=store,
        streams=[CATALOG],
        handler=make_handler(store, settings.dagster.code_location, loader=loader),
        jobs=[
            PeriodicJob(
                name="rescan",
                func=lambda: rescan(store, settings.dagster.code_location, trigger="rescan", loader=loader),
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
