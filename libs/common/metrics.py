"""Prometheus metrics shared by every worker (bus, store, worker loop). Service metrics live in services."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PUBLISHED = Counter("ams_events_published_total", "Events written to a stream", ["stream"])
EVENTS_CONSUMED = Counter(
    "ams_events_consumed_total", "Stream entries settled (handled or dead-lettered) and acknowledged", ["stream", "group"]
)
DEAD_LETTERS = Counter("ams_dead_letters_total", "Entries moved to a dead-letter stream", ["stream", "group"])
ENTRIES_CLAIMED = Counter("ams_entries_claimed_total", "Idle pending entries claimed from other consumers", ["stream", "group"])
GROUP_RECREATED = Counter("ams_consumer_group_recreated_total", "Consumer groups recreated after NOGROUP", ["group"])
HANDLER_FAILURES = Counter("ams_handler_failures_total", "Entries whose handler raised (left pending)", ["group"])
HANDLER_SECONDS = Histogram(
    "ams_handler_duration_seconds",
    "Time to handle one batch of events, store commit included",
    ["group"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REDIS_RECONNECTS = Counter("ams_redis_reconnects_total", "Times the worker lost Redis and retried", ["service"])
CONSUMER_LAG = Gauge("ams_consumer_lag_entries", "Entries in the stream not yet delivered to the group", ["stream", "group"])
PENDING = Gauge("ams_consumer_pending_entries", "Entries delivered to the group but not yet acknowledged", ["stream", "group"])
DLQ_LENGTH = Gauge("ams_dead_letter_stream_length", "Entries in a dead-letter stream", ["stream"])
READY = Gauge("ams_worker_ready", "1 when the worker reaches Redis and its store", ["service"])
# `job_name`, not `job`: Prometheus's target label `job` would rename ours to `exported_job` at scrape time.
JOB_FAILURES = Counter("ams_scheduled_job_failures_total", "Periodic jobs that raised", ["service", "job_name"])


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """Observe every amount in `amounts` on a histogram child, with one increment per bucket.

    A worker observes each event of a thousand-event batch; `observe` takes a lock and scans the buckets
    per amount. This uses prometheus_client's Histogram internals (`_upper_bounds`, `_buckets`, `_sum`);
    tests/libs/common/test_metrics.py checks that it exposes exactly what `observe` would.
    """
    bounds: list[float] = histogram._upper_bounds
    per_bucket: dict[int, int] = {}
    total = 0.0
    for amount in amounts:
        i = bisect_left(bounds, amount)  # the first bucket whose upper bound is >= amount
        per_bucket[i] = per_bucket.get(i, 0) + 1
        total += amount
    if not per_bucket:
        return
    histogram._sum.inc(total)
    for i, n in per_bucket.items():
        histogram._buckets[i].inc(n)
