"""The worker runtime: the consume loop, periodic jobs, the service surface and a graceful stop.

A service is its domain logic plus a `build(settings) -> Worker` function, run by :func:`run_service`:

    def build(settings: HealthWorkerSettings) -> Worker:
        return Worker(service=ServiceName.HEALTH, settings=settings, store=store, streams=[RUNS, ASSETS],
                      handler=service.handle, jobs=[PeriodicJob(name="evaluate", func=..., interval_s=60)])

    def main() -> int:
        return run_service(ServiceName.HEALTH, HealthWorkerSettings, build)

After every handled batch and every periodic job the worker publishes what was staged in the store's outbox.
SIGTERM/SIGINT finish the batch in hand (its entries acknowledged), stop the scheduler and exit 0.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import redis
from apscheduler.schedulers.background import BackgroundScheduler

from libs.common import heap, metrics, outbox
from libs.common.bus import INFRASTRUCTURE_ERRORS, Bus, Consumer, Handler, backoff_delays, connect
from libs.common.events import utcnow
from libs.common.http import ServiceServer
from libs.common.log import configure_logging, get_logger
from libs.common.settings import ConfigError, ServiceName, Settings, SettingsT, load_settings
from libs.common.store import Store, StoreError

log = get_logger(__name__)
# Often enough that the consume loop's commits almost never checkpoint themselves under a backlog.
_CHECKPOINT_INTERVAL_S = 0.25
_RELEASE_HEAP_INTERVAL_S = 30.0
# A SQLite store has one writer host, so a service on one runs as one consumer: the first holds a lease in
# Redis, renewed every third of its TTL. A second (`--scale health=2`, StatefulSet replicas: 2, each with its
# own volume) waits one TTL (the holder may be a crashed predecessor) and then exits with an error.
LEASE_TTL_S = 30.0
# Take the lease when free or already ours (a restarted consumer keeps its name); else return the holder.
_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ''
end
return holder
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StartupError(Exception):
    """The environment keeps the worker from starting (its port taken, ...); the message says what."""


@dataclass(frozen=True, kw_only=True)
class PeriodicJob:
    """A function the worker runs every `interval_s` seconds in a background thread."""

    name: str
    func: Callable[[], Any]
    interval_s: float
    run_at_start: bool = False


class Worker:
    """Consumes streams for one service, keeps its store, serves its metrics and health."""

    def __init__(
        self,
        *,
        service: ServiceName | str,
        settings: Settings,
        store: Store,
        streams: Sequence[str],
        handler: Handler,
        jobs: Sequence[PeriodicJob] = (),
        on_startup: Callable[[Worker], None] | None = None,
        on_shutdown: Callable[[Worker], None] | None = None,
        port: int | None = None,
    ) -> None:
        self.service = str(service)
        self.settings = settings
        self.store = store
        self.streams = list(streams)
        self.jobs = list(jobs)
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        endpoint = settings.services.endpoint(service) if isinstance(service, ServiceName) else None
        self.host = endpoint.host if endpoint else "127.0.0.1"
        self.port = port if port is not None else (endpoint.port if endpoint else 0)
        self.client = connect(settings.redis, block_ms=settings.bus.block_ms)
        self.bus = Bus(self.client, settings.bus)
        self.consumer = Consumer(
            bus=self.bus,
            group=service,
            name=settings.bus.consumer_name or f"{service}-{socket.gethostname()}",
            streams=self.streams,
            handler=handler,
        )
        self._stop = threading.Event()
        self._last_loop = time.monotonic()
        self._problem: str | None = None
        self._ready = False  # mirrors ams_worker_ready
        self._outbox_dirty = True  # flush what a previous process staged but did not publish
        self._single = store.dialect == "sqlite"  # see LEASE_TTL_S
        self._lease_key = self.bus.key(f"lease:{service}")
        self._lease_due = 0.0  # monotonic time of the next renewal
        self._lease_denied_since: float | None = None
        self._refused_by: str | None = None
        self.server: ServiceServer | None = None
        # A periodic job still running at its next turn is skipped, and a late one runs once (coalesce, no
        # misfire limit): by design, so APScheduler's warnings about it are dropped (_QuietSkips).
        self.scheduler = BackgroundScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        _install_quiet_skips()

    # -- lifecycle -------------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stop.set()

    def request_flush(self) -> None:
        """Have the loop publish the store's outbox soon (the worker does so after every job by itself)."""
        self._outbox_dirty = True

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        # Before the server, scheduler and reporter threads exist: each would get a malloc arena of its own.
        heap.limit_arenas()
        self._check_credentials()
        try:
            self.server = ServiceServer(
                self.host,
                self.port,
                checks={
                    "redis": self._check_redis,
                    "store": self._check_store,
                    "worker": lambda: self._problem,
                },
                alive=self._alive,
            ).start()
        except OSError as exc:
            self.client.close()
            self.store.close()
            raise StartupError(
                f"cannot serve on {self.host}:{self.port} (services.{self.service}.port): "
                f"{exc.strerror or exc}"
            ) from None
        log.info(
            "worker_started",
            service=self.service,
            port=self.server.port,
            streams=self.streams,
            consumer=self.consumer.name,
            store=str(self.store.path),
        )
        if self.on_startup:
            self.on_startup(self)
        # Workers keep large long-lived caches and allocate many short-lived event objects: with CPython's
        # default thresholds the collector rescans the caches again and again (measured: event parsing
        # 22 µs -> 10 µs per event). Start-up objects go to the permanent generation; collect less often.
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        try:
            self._loop()  # starts the periodic jobs once the worker may write its store (the lease)
        finally:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
            if self.on_shutdown:
                self.on_shutdown(self)
            self.server.stop()
            self.store.close()
            if self._single and self._refused_by is None:
                with contextlib.suppress(*INFRASTRUCTURE_ERRORS):
                    self.client.eval(_RELEASE_LEASE, 1, self._lease_key, self.consumer.name)
            self.client.close()
            log.info("worker_stopped", service=self.service)
        return 0 if self._refused_by is None else 1

    def _check_credentials(self) -> None:
        """Stop the start when Redis refuses this worker's credentials: retrying cannot help. Redis merely
        unreachable is not an error here; the loop retries and /readyz reports it."""
        try:
            self.client.ping()
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError, redis.ResponseError) as exc:
            text = str(exc)
            refused = text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
            if isinstance(exc, redis.ResponseError) and not refused:
                return
            where = urlparse(self.settings.redis.url)
            self.client.close()
            self.store.close()
            server = f"{where.hostname}:{where.port or 6379}" if where.hostname else where.path
            raise StartupError(
                f"Redis at {server} refused the credentials "
                f"(redis.password / AMS_REDIS__PASSWORD or the URL's): {text}"
            ) from None
        except INFRASTRUCTURE_ERRORS:
            return

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("worker_stopping", service=self.service, signal=signal.Signals(signum).name)
        self.stop()

    def _loop(self) -> None:
        delays = backoff_delays()
        while not self._stop.is_set():
            self._last_loop = time.monotonic()
            try:
                if self._single and not self._hold_lease():
                    continue
                if not self.scheduler.running:
                    self._start_jobs()
                if self.consumer.poll(block=True) or self._outbox_dirty:
                    # Derived events staged by the handler go out once their transaction is committed.
                    outbox.flush(self.store, self.bus)
                    self._outbox_dirty = False
            except INFRASTRUCTURE_ERRORS as exc:
                self._outbox_dirty = True
                self._set_problem(f"{type(exc).__name__}: {exc}")
                metrics.REDIS_RECONNECTS.labels(service=self.service).inc()
                self._stop.wait(next(delays))
                continue
            if self._problem is not None:
                log.info("worker_recovered", service=self.service, after=self._problem)
                self._problem = None
            if not self._ready:
                self._ready = True
                metrics.READY.labels(service=self.service).set(1)
            delays = backoff_delays()

    def _hold_lease(self) -> bool:
        """Take or renew the single-consumer lease; False while another consumer holds it."""
        now = time.monotonic()
        if now < self._lease_due:
            return True
        holder = self.client.eval(
            _TAKE_LEASE, 1, self._lease_key, self.consumer.name, int(LEASE_TTL_S * 1000)
        )
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        if not holder:
            self._lease_due = now + LEASE_TTL_S / 3
            self._lease_denied_since = None
            return True
        self._lease_denied_since = self._lease_denied_since or now
        if now - self._lease_denied_since > LEASE_TTL_S:
            self._refused_by = holder
            log.error(
                "worker_refused",
                service=self.service,
                holder=holder,
                store=str(self.store.path),
                reason="a SQLite store takes one consumer; point the store URL at PostgreSQL to scale",
            )
            self.stop()
        else:
            self._set_problem(f"{holder} holds this service's SQLite store lease; waiting for it to expire")
            self._stop.wait(1.0)
        return False

    def _set_problem(self, problem: str) -> None:
        self._ready = False
        if problem != self._problem:
            log.warning("worker_degraded", service=self.service, problem=problem)
        self._problem = problem[:300]
        metrics.READY.labels(service=self.service).set(0)

    # -- periodic jobs ---------------------------------------------------------------------------------

    def _start_jobs(self) -> None:
        jobs = [
            *self.jobs,
            PeriodicJob(name="stream_gauges", func=self.update_stream_gauges, interval_s=15),
            PeriodicJob(
                name="store_checkpoint", func=self.checkpoint_store, interval_s=_CHECKPOINT_INTERVAL_S
            ),
            # Freed memory back to the system (a backlog's batches, a pass's histories): a few ms a minute.
            PeriodicJob(name="release_heap", func=heap.trim, interval_s=_RELEASE_HEAP_INTERVAL_S),
        ]
        for job in jobs:
            # APScheduler pauses a job given next_run_time=None, so pass it only to run at once.
            start = {"next_run_time": utcnow()} if job.run_at_start else {}
            self.scheduler.add_job(
                self._guarded(job), "interval", seconds=job.interval_s, id=job.name, **start
            )
        self.scheduler.start()

    def _guarded(self, job: PeriodicJob) -> Callable[[], None]:
        def run() -> None:
            try:
                job.func()
            except Exception:
                metrics.JOB_FAILURES.labels(service=self.service, job_name=job.name).inc()
                log.exception("job_failed", service=self.service, job=job.name)
            finally:
                # A job may have staged derived events (a time-driven transition, a rescan's changes).
                self._outbox_dirty = True

        return run

    def checkpoint_store(self) -> None:
        """Checkpoint the store's write-ahead log off the consume loop (see libs.common.store)."""
        # An unwell store fails the loop's commits too, which report it (unready, one log line per problem);
        # a commit checkpoints by itself once the store is well again.
        with contextlib.suppress(sqlite3.Error):
            self.store.checkpoint()

    def update_stream_gauges(self) -> None:
        """Refresh consumer lag, pending and dead-letter gauges from XINFO."""
        group = self.consumer.group
        for stream in self.streams:
            info = self.bus.group_info(group, stream)
            if info is not None:
                metrics.PENDING.labels(stream=stream, group=group).set(int(info.get("pending") or 0))
                if info.get("lag") is not None:
                    metrics.CONSUMER_LAG.labels(stream=stream, group=group).set(int(info["lag"]))
            metrics.DLQ_LENGTH.labels(stream=stream).set(int(self.client.xlen(self.bus.key(stream) + ":dlq")))

    # -- probes ----------------------------------------------------------------------------------------

    def _alive(self) -> bool:
        # The loop blocks at most block_ms per round; long silence means it is wedged.
        return time.monotonic() - self._last_loop < max(60.0, 10 * self.settings.bus.block_ms / 1000)

    def _check_redis(self) -> str | None:
        self.client.ping()
        return None

    def _check_store(self) -> str | None:
        self.store.ping()
        return None


def run_service(service: ServiceName, model: type[SettingsT], build: Callable[[SettingsT], Worker]) -> int:
    """Run the worker `build` makes from the settings `model`: the entry point of `python -m services.<name>`.

    Start-up problems end the process with one line each on stderr: exit code 2 for the configuration (the
    field and the file or variable named, a configured secret that is not set), 1 for the environment (a
    store that cannot be opened, the port taken, Redis unreachable or refusing the credentials)."""
    try:
        settings = load_settings(model)
    except ConfigError as exc:
        return startup_error(service, exc, code=2)
    missing = settings.missing_secrets()
    if missing:
        return startup_error(service, "\n".join(missing), code=2)
    configure_logging(settings, service=service)
    try:
        worker = build(settings)
    except ConfigError as exc:
        return startup_error(service, exc, code=2)
    except StoreError as exc:
        return startup_error(service, exc, code=1)
    try:
        return worker.run()
    except StartupError as exc:
        return startup_error(service, exc, code=1)


def startup_error(service: ServiceName | str, problem: Exception | str, *, code: int) -> int:
    """Print `problem` as one line per problem on stderr (`<service>: error: ...`); returns `code`."""
    lines = [line.strip() for line in str(problem).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = [f"{lines[0][:-1]}: {line}" for line in lines[1:]]
    for line in lines:
        print(f"{service}: error: {line}", file=sys.stderr)
    return code


class _QuietSkips(logging.Filter):
    """Drops APScheduler's "skipped: maximum number of running instances reached" (a skip is intended)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def _install_quiet_skips() -> None:
    logger = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, _QuietSkips) for f in logger.filters):
        logger.addFilter(_QuietSkips())
