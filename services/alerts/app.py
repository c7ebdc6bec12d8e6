"""Wiring of the alerts worker: settings, logging, store, service, sender, Worker."""

from __future__ import annotations

from libs.common.events import ASSET_CHANGES, HEALTH
from libs.common.log import configure_logging, get_logger, register_secret
from libs.common.settings import Settings, load_settings
from libs.common.worker import PeriodicJob, Worker
from services.alerts.sender import Sender
from services.alerts.service import AlertService
from services.alerts.store import open_store

log = get_logger(__name__)


def build_worker(settings: Settings, *, port: int | None = None) -> Worker:
    """The alerts worker: consumes health and asset-changes, ticks the clock, runs the sender."""
    store = open_store(settings)
    for receiver in settings.alerts.receivers:
        if receiver.kind in ("slack", "teams"):
            register_secret(receiver.url)  # the URL itself is the credential
    sender = Sender(store, settings)
    service = AlertService(store, settings, on_commit=sender.wake)
    jobs = [
        PeriodicJob(name="alerts_tick", func=service.tick, interval_s=settings.alerts.tick_interval_s, run_at_start=True),
        PeriodicJob(name="alerts_gauges", func=service.update_gauges, interval_s=5.0, run_at_start=True),
        PeriodicJob(name="alerts_retention", func=service.prune, interval_s=3600.0),
    ]
    return Worker(
        service="alerts",
        settings=settings,
        store=store,
        # Asset specs first: when both streams have entries, an alert finds its owners already stored.
        streams=[ASSET_CHANGES, HEALTH],
        handler=service.handle,
        jobs=jobs,
        on_startup=lambda _worker: sender.start(),
        on_shutdown=lambda _worker: sender.stop(),
        port=port,
    )


def main() -> int:
    """Run the alerts worker until SIGTERM/SIGINT."""
    settings = load_settings()
    configure_logging(settings, service="alerts")
    return build_worker(settings).run()
