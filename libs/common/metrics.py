"""Prometheus metrics shared by every worker (bus, store, worker loop). Service metrics live in services."""

from __future__ import annotations

import itertools
import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector

EVENTS_PUBLISHED = Counter("ams_events_published_total", "Events written to a stream", ["stream"])
EVENTS_CONSUMED = Counter(
    "ams_events_consumed_total",
    "Stream entries settled (handled or dead-lettered) and acknowledged",
    ["stream", "group"],
)
# reason: invalid, wrong_stream, clock_skew, handler_failed, redelivered (see Bus.dead_letter)
DEAD_LETTERS = Counter(
    "ams_dead_letters_total", "Entries moved to a dead-letter stream", ["stream", "group", "reason"]
)
ENTRIES_CLAIMED = Counter(
    "ams_entries_claimed_total", "Idle pending entries claimed from other consumers", ["stream", "group"]
)
GROUP_RECREATED = Counter(
    "ams_consumer_group_recreated_total", "Consumer groups recreated after NOGROUP", ["group"]
)
HANDLER_FAILURES = Counter(
    "ams_handler_failures_total", "Entries whose handler raised (left pending)", ["group"]
)
HANDLER_SECONDS = Histogram(
    "ams_handler_duration_seconds",
    "Time to handle one batch of events, store commit included",
    ["group"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REDIS_RECONNECTS = Counter(
    "ams_redis_reconnects_total", "Times the worker lost Redis and retried", ["service"]
)
CONSUMER_LAG = Gauge(
    "ams_consumer_lag_entries", "Entries in the stream not yet delivered to the group", ["stream", "group"]
)
PENDING = Gauge(
    "ams_consumer_pending_entries",
    "Entries delivered to the group but not yet acknowledged",
    ["stream", "group"],
)
DLQ_LENGTH = Gauge("ams_dead_letter_stream_length", "Entries in a dead-letter stream", ["stream"])
READY = Gauge("ams_worker_ready", "1 when the worker reaches Redis and its store", ["service"])
# `job_name`, not `job`: Prometheus's target label `job` would rename ours to `exported_job` at scrape time.
JOB_FAILURES = Counter(
    "ams_scheduled_job_failures_total", "Periodic jobs that raised", ["service", "job_name"]
)


class BatchHistogram(Collector):
    """A labelled histogram fed a batch of amounts at a time, exposed as prometheus_client's `Histogram` is
    (`_bucket`, `_count`, `_sum`) through the public collector API.

    A worker observes every event of a thousand-event batch: `Histogram.observe` takes a lock and scans the
    buckets per amount, this takes the lock once per batch and bisects.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        bounds = sorted(float(b) for b in buckets)
        self._bounds = bounds if bounds and bounds[-1] == math.inf else [*bounds, math.inf]
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _HistogramSeries] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, **labels: str) -> _HistogramSeries:
        """The series of these label values (created on first use)."""
        if set(labels) != set(self._labelnames):
            raise ValueError(f"{self._name} takes the labels {self._labelnames}, got {sorted(labels)}")
        values = tuple(str(labels[n]) for n in self._labelnames)
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = self._series[values] = _HistogramSeries(self._bounds, self._lock)
            return series

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            for values, series in self._series.items():
                cumulative = list(itertools.accumulate(series.counts))
                family.add_metric(
                    list(values),
                    [(_le(b), float(n)) for b, n in zip(self._bounds, cumulative, strict=True)],
                    sum_value=series.total,
                )
        return [family]


def _le(bound: float) -> str:
    """A bucket's `le` label as prometheus_client writes it (`0.5`, `1.0`, `+Inf`)."""
    return "+Inf" if bound == math.inf else repr(float(bound))


class _HistogramSeries:
    """One label set of a :class:`BatchHistogram`."""

    def __init__(self, bounds: list[float], lock: threading.Lock) -> None:
        self._bounds = bounds
        self._lock = lock
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe_many(self, amounts: Iterable[float]) -> None:
        """Count every amount in its bucket (the first whose upper bound is >= it)."""
        per_bucket: dict[int, int] = {}
        total = 0.0
        for amount in amounts:
            i = bisect_left(self._bounds, amount)
            per_bucket[i] = per_bucket.get(i, 0) + 1
            total += amount
        with self._lock:
            for i, n in per_bucket.items():
                self.counts[i] += n
            self.total += total
