"""The sender: delivers the notification outbox of monitor.db, durably.

It runs in its own thread (with a small pool for concurrent POSTs), woken right after a commit that queued
notifications and otherwise polling at most every `POLL_S`. Rules:

* notices about one alert reach a receiver in order: a later one waits while an earlier one is retried;
* a 2xx marks the notification delivered in the store at once, so it is never sent again;
* 5xx, 408, 429, timeouts and connection errors are retried with exponential backoff and jitter, or after
  the receiver's `Retry-After` when it gives one;
* other statuses (4xx, redirects) are not retried: the notification is dead, with the reason;
* a notification older than `max_age_s` is dead too; dead notifications stay visible (`alerts deliveries
  --failed`) until retention removes them;
* the state lives in the store (attempts, next attempt, last error), so a restart resumes mid-retry.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from libs.common.bus import INFRASTRUCTURE_ERRORS
from libs.common.log import get_logger
from libs.common.store import Store
from services.alerts import metrics
from services.alerts.receivers import AlertPayload, Attempt, deliver
from services.alerts.settings import AlertsWorkerSettings

log = get_logger(__name__)

POLL_S = 1.0  # also picks up notifications queued by other processes (the CLI's unsilence)


class Sender:
    """Delivers pending notifications from the store; `wake()` after committing new ones."""

    def __init__(
        self,
        store: Store,
        settings: AlertsWorkerSettings,
        *,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.settings = settings
        self.cfg = settings.alerts
        self.clock = clock
        self.jitter = jitter
        self.client = httpx.Client(follow_redirects=False, headers={"accept": "application/json"})
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self._pool = ThreadPoolExecutor(
            max_workers=self.cfg.sender_concurrency, thread_name_prefix="alerts-send"
        )
        self._thread = threading.Thread(target=self._run, name="alerts-sender", daemon=True)
        timeouts = [r.timeout_s for r in self.cfg.receivers] or [10.0]
        self.lease_s = max(timeouts) + 30.0

    # -- lifecycle -------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look at the outbox now (called right after a commit that queued notifications)."""
        self._wake.set()

    def start(self) -> None:
        """Release leases of a previous process (one sender per store) and start the thread."""
        with self.store.write() as conn:
            conn.execute("UPDATE notifications SET lease_until = NULL WHERE status = 'pending'")
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop taking work, let attempts in flight finish, close the HTTP client."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=True)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = self.dispatch()
            except INFRASTRUCTURE_ERRORS as exc:
                log.warning("sender_store_error", error=f"{type(exc).__name__}: {exc}")
                wait = POLL_S
            except Exception:
                log.exception("sender_failed")
                wait = POLL_S
            if wait > 0:
                self._wake.wait(wait)

    # -- dispatching -----------------------------------------------------------------------------------

    def dispatch(self) -> float:
        """Hand due notifications to the pool; returns how long to wait before looking again."""
        now = self.clock()
        with self._lock:
            free = self.cfg.sender_concurrency - len(self._inflight)
        if free <= 0:
            return POLL_S  # a finishing attempt wakes us
        rows = self._claim(now, free)
        for row in rows:
            with self._lock:
                self._inflight.add(row["id"])
            self._pool.submit(self._attempt_guarded, row)
        if len(rows) == free:
            return POLL_S
        nxt = (
            self.store.connection()
            .execute(
                "SELECT MIN(next_attempt_at) FROM notifications"
                " WHERE status = 'pending' AND next_attempt_at > ?",
                (now,),
            )
            .fetchone()[0]
        )
        return POLL_S if nxt is None else max(0.0, min(POLL_S, float(nxt) - now))

    def run_until_idle(self, timeout_s: float = 30.0) -> None:
        """Deliver everything due now, synchronously (for tests and the CLI)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self._claim(self.clock(), self.cfg.sender_concurrency)
            if not rows:
                return
            for row in rows:
                self._attempt(row)

    def _claim(self, now: float, limit: int) -> list[dict[str, Any]]:
        with self.store.write() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    # An earlier notice of the same alert to the same receiver goes first (a PagerDuty resolve
                    # must not overtake its trigger while the trigger is being retried).
                    """SELECT * FROM notifications AS n WHERE status = 'pending' AND next_attempt_at <= ?
                         AND (lease_until IS NULL OR lease_until < ?)
                         AND NOT EXISTS (SELECT 1 FROM notifications AS o WHERE o.fingerprint = n.fingerprint
                           AND o.receiver = n.receiver AND o.status = 'pending' AND o.rowid < n.rowid)
                         ORDER BY next_attempt_at LIMIT ?""",
                    (now, now, limit),
                )
            ]
            conn.executemany(
                "UPDATE notifications SET lease_until = ? WHERE id = ?",
                [(now + self.lease_s, r["id"]) for r in rows],
            )
        return rows

    def _attempt_guarded(self, row: dict[str, Any]) -> None:
        try:
            self._attempt(row)
        except Exception:
            log.exception("delivery_failed_internally", notification=row["id"])
        finally:
            with self._lock:
                self._inflight.discard(row["id"])
            self._wake.set()

    def _attempt(self, row: dict[str, Any]) -> None:
        name = row["receiver"]
        try:
            receiver = self.settings.receiver(name)
        except KeyError:
            self._finish(
                row, Attempt(ok=False, retryable=False, error=f"receiver {name!r} is no longer configured")
            )
            return
        if self.clock() - row["created_at"] > self.cfg.max_age_s:
            last = f"; last error: {row['last_error']}" if row["last_error"] else ""
            error = (
                f"gave up after {row['attempts']} attempts: "
                f"older than max_age_s ({self.cfg.max_age_s:g}s){last}"
            )
            self._dead(row, int(row["attempts"]), row["last_status"], error)
            return
        payload = AlertPayload.model_validate_json(row["content"])
        self._finish(row, deliver(self.client, receiver, payload))

    def _finish(self, row: dict[str, Any], attempt: Attempt) -> None:
        now = self.clock()
        attempts = int(row["attempts"]) + 1
        receiver = row["receiver"]
        if attempt.ok:
            self._write(
                """UPDATE notifications SET status = 'delivered', attempts = ?, delivered_at = ?,
                     last_attempt_at = ?, last_status = ?, last_error = NULL, lease_until = NULL
                     WHERE id = ? AND status = 'pending'""",
                (attempts, now, now, attempt.status, row["id"]),
            )
            metrics.NOTIFICATIONS_SENT.labels(receiver=receiver).inc()
            metrics.DELIVERY_LATENCY.labels(receiver=receiver).observe(max(0.0, now - row["created_at"]))
            log.info(
                "notification_delivered",
                notification=row["id"],
                receiver=receiver,
                kind=row["kind"],
                attempts=attempts,
                status=attempt.status,
            )
            return
        metrics.NOTIFICATIONS_FAILED.labels(receiver=receiver).inc()
        error = attempt.error or "failed"
        if attempt.retryable:
            delay = self.retry_delay(attempts, attempt.retry_after_s)
            next_at = now + delay
            if next_at - row["created_at"] <= self.cfg.max_age_s:
                self._write(
                    """UPDATE notifications SET attempts = ?, next_attempt_at = ?, last_attempt_at = ?,
                         last_status = ?, last_error = ?, lease_until = NULL
                         WHERE id = ? AND status = 'pending'""",
                    (attempts, next_at, now, attempt.status, error, row["id"]),
                )
                log.warning(
                    "notification_retry",
                    notification=row["id"],
                    receiver=receiver,
                    attempts=attempts,
                    error=error,
                    retry_in_s=round(delay, 3),
                )
                return
            error = f"gave up after {attempts} attempts (max_age_s {self.cfg.max_age_s:g}): {error}"
        else:
            error = f"not retried: {error}"
        self._dead(row, attempts, attempt.status, error)

    def _dead(self, row: dict[str, Any], attempts: int, status: int | None, error: str) -> None:
        self._write(
            """UPDATE notifications SET status = 'dead', attempts = ?, last_attempt_at = ?, last_status = ?,
                 last_error = ?, lease_until = NULL WHERE id = ? AND status = 'pending'""",
            (attempts, self.clock(), status, error, row["id"]),
        )
        metrics.NOTIFICATIONS_DEAD.labels(receiver=row["receiver"]).inc()
        log.error("notification_dead", notification=row["id"], receiver=row["receiver"], error=error)

    def retry_delay(self, attempts: int, retry_after_s: float | None) -> float:
        """Seconds before the next attempt: the receiver's Retry-After (capped), else exponential backoff
        with jitter (half fixed, half random, so retries never bunch at zero)."""
        if retry_after_s is not None:
            return float(min(retry_after_s, self.cfg.retry_after_max_s))
        ceiling = min(self.cfg.retry_max_delay_s, self.cfg.retry_base_s * 2 ** min(attempts - 1, 30))
        return float(ceiling / 2 + self.jitter() * ceiling / 2)

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        # A 2xx must reach the store even if it is briefly locked: retry rather than lose the mark.
        for attempt in range(20):
            try:
                with self.store.write() as conn:
                    conn.execute(sql, params)
                return
            except sqlite3.OperationalError:
                if attempt == 19 or (self._stop.is_set() and attempt > 3):
                    raise
                time.sleep(0.05 * (attempt + 1))
