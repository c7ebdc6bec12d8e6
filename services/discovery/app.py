"""The discovery worker: consumes the catalog stream, rescans periodically, publishes asset changes."""

from __future__ import annotations

from libs.common.events import CATALOG
from libs.common.log import configure_logging, get_logger
from libs.common.settings import Settings, load_settings
from libs.common.worker import PeriodicJob, Worker
from services.discovery import metrics
from services.discovery.scan import Loader, definitions_loader
from services.discovery.service import make_handler, rescan
from services.discovery.store import open_store

log = get_logger(__name__)


def build_worker(settings: Settings, *, port: int | None = None, loader: Loader | None = None) -> Worker:
    """Wire the discovery worker (store, handler, periodic rescan) without running it."""
    store = open_store(settings)
    metrics.refresh_gauges(store.connection())
    location = settings.discovery.code_location
    loader = loader or definitions_loader(settings.discovery.definitions)
    holder: list[Worker] = []

    def periodic_rescan() -> None:
        outcome = rescan(store, location, trigger="rescan", loader=loader)
        if outcome.events and holder:
            holder[0].request_flush()

    worker = Worker(
        service="discovery",
        settings=settings,
        store=store,
        streams=[CATALOG],
        handler=make_handler(store, location, loader=loader),
        jobs=[
            PeriodicJob(
                name="rescan",
                func=periodic_rescan,
                interval_s=settings.discovery.rescan_interval_s,
                run_at_start=settings.discovery.rescan_at_start,
            ),
            PeriodicJob(
                name="prune_processed",
                func=lambda: store.prune_processed(settings.discovery.processed_retention_days * 86400.0),
                interval_s=3600,
            ),
        ],
        port=port,
    )
    holder.append(worker)
    return worker


def main() -> int:
    """Entry point of `python -m services.discovery`."""
    settings = load_settings()
    configure_logging(settings, service="discovery")
    return build_worker(settings).run()
