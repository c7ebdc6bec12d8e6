"""The health worker: consumes assets, runs and asset-changes; evaluates by time; reports to Dagster."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from libs.common.events import ASSET_CHANGES, ASSETS, RUNS
from libs.common.log import configure_logging, get_logger
from libs.common.settings import ConfigError, Settings, load_settings
from libs.common.worker import PeriodicJob, Worker
from services.health.dagster_checks import DagsterCheckReporter
from services.health.engine import HealthEngine
from services.health.store import open_store

log = get_logger(__name__)
# Materializations before run events: in one poll, a run's failure must not be judged before the
# materializations it did produce are on record.
# Asset specs first: when several streams have entries, evaluations see the current spec.
STREAMS = (ASSET_CHANGES, ASSETS, RUNS)


@dataclass
class HealthService:
    worker: Worker
    engine: HealthEngine
    reporter: DagsterCheckReporter | None


def build(settings: Settings, *, port: int | None = None) -> HealthService:
    """Wire the health worker (store, engine, Dagster reporter, periodic jobs) without running it."""
    store = open_store(settings)
    cfg = settings.health
    reporter = (
        DagsterCheckReporter(cfg.dagster_url, timeout_s=cfg.dagster_timeout_s, attempts=cfg.dagster_retries)
        if cfg.dagster_url
        else None
    )
    engine = HealthEngine(store, settings, report=reporter.submit if reporter else None)
    engine.update_status_gauge()

    def startup(_: Worker) -> None:
        if reporter is not None:
            reporter.start()
            log.info("dagster_check_reporting", url=cfg.dagster_url)

    def shutdown(_: Worker) -> None:
        if reporter is not None:
            reporter.stop()

    worker = Worker(
        service="health",
        settings=settings,
        store=store,
        streams=STREAMS,
        handler=engine.handle,
        jobs=[
            PeriodicJob(name="evaluate", func=engine.evaluate_all, interval_s=cfg.evaluation_interval_s, run_at_start=True),
            PeriodicJob(name="evaluate_pending", func=engine.evaluate_pending, interval_s=cfg.max_defer_s),
            PeriodicJob(name="retention", func=engine.retention, interval_s=cfg.retention_interval_s),
            PeriodicJob(name="status_gauges", func=engine.refresh_status_gauges, interval_s=1.0),
        ],
        on_startup=startup,
        on_shutdown=shutdown,
        port=port,
    )
    engine.on_staged = worker.request_flush
    return HealthService(worker, engine, reporter)


def main() -> int:
    """Entry point of `python -m services.health`."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings, service="health")
    return build(settings).worker.run()
