"""Wiring of the health worker: store, service, Dagster check reporter, periodic jobs."""

from __future__ import annotations

from libs.common.events import ASSET_CHANGES, ASSETS, AUTOMATION, RUNS
from libs.common.log import get_logger
from libs.common.settings import ServiceName
from libs.common.worker import PeriodicJob, Worker, run_service
from services.health.dagster_checks import DagsterCheckReporter
from services.health.service import HealthService
from services.health.settings import HealthWorkerSettings
from services.health.store import open_store

log = get_logger(__name__)

# Asset specs first, then materializations, then runs: in one poll, evaluations see the current spec, and a
# run's failure is not judged before the materializations it did produce are on record. Automation (sensor and
# schedule ticks, heartbeats: services/health/automation.py) last; it touches no asset.
STREAMS = (ASSET_CHANGES, ASSETS, RUNS, AUTOMATION)


def build(settings: HealthWorkerSettings, *, port: int | None = None) -> Worker:
    """The health worker: consumes asset-changes, assets, runs and automation; evaluates by time; reports
    to Dagster."""
    store = open_store(settings)
    cfg = settings.health
    dagster = settings.dagster
    reporter = (
        DagsterCheckReporter(dagster.url, timeout_s=dagster.timeout_s, attempts=dagster.retries)
        if dagster.url
        else None
    )
    service = HealthService(store, settings, report=reporter.submit if reporter else None)
    service.update_status_gauge()
    service.update_publisher_gauge()

    def start_reporting(_: Worker) -> None:
        if reporter is not None:
            reporter.start()
            log.info("dagster_check_reporting", url=dagster.url)

    def stop_reporting(_: Worker) -> None:
        if reporter is not None:
            reporter.stop()

    return Worker(
        service=ServiceName.HEALTH,
        settings=settings,
        store=store,
        streams=STREAMS,
        handler=service.handle,
        jobs=[
            PeriodicJob(
                name="evaluate",
                func=service.evaluate_all,
                interval_s=cfg.evaluation_interval_s,
                run_at_start=True,
            ),
            PeriodicJob(name="evaluate_pending", func=service.evaluate_pending, interval_s=cfg.max_defer_s),
            PeriodicJob(
                name="evaluate_automation",
                func=service.evaluate_automation,
                interval_s=cfg.evaluation_interval_s,
                run_at_start=True,
            ),
            PeriodicJob(name="retention", func=service.retention, interval_s=cfg.retention_interval_s),
            PeriodicJob(name="status_gauges", func=service.status_gauges, interval_s=1.0),
        ],
        on_startup=start_reporting,
        on_shutdown=stop_reporting,
        port=port,
    )


def main() -> int:
    """Entry point of `python -m services.health`."""
    return run_service(ServiceName.HEALTH, HealthWorkerSettings, build)
