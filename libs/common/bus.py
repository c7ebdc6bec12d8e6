"""The Redis stream bus: publish events, consume them in a consumer group, dead-letter what cannot be handled.

Delivery is at least once. A consumer hands a batch of validated events to its handler, which commits its
store transaction (recording the event ids) and returns; only then are the entries acknowledged. On start a
consumer drains its own pending entries, and it periodically claims entries left idle by dead consumers.
Entries that fail validation, or whose handler still fails after `max_deliveries` deliveries, are written to
`<stream>:dlq` with the error before they are acknowledged.
"""

from __future__ import annotations

import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from libs.common import heap, metrics
from libs.common.events import (
    STREAM_TYPES,
    AnyEvent,
    Event,
    implausible_time,
    latest_plausible,
    parse_event,
    wrong_stream,
)
from libs.common.log import get_logger
from libs.common.settings import BusSettings, RedisSettings

log = get_logger(__name__)

DLQ_SUFFIX = ":dlq"
# Errors after which the connection is worth retrying (Redis restarting, network blips).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    ConnectionResetError,
)
# Failures of the infrastructure rather than of an event (Redis gone, store locked, disk full, read-only
# file): the batch is kept and retried in-process, so these never count towards dead-lettering.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    sqlite3.OperationalError,
    OSError,
)


def connect(cfg: RedisSettings, *, block_ms: int = 0) -> redis.Redis:
    """A redis-py client whose socket timeout stays above the blocking read of `block_ms`."""
    kwargs: dict[str, Any] = {
        # RESP2 replies have the same shape on redis-py 5 to 8.
        "protocol": 2,
        "socket_timeout": max(cfg.socket_timeout_s, block_ms / 1000 + 5),
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=2),
        "client_name": f"ams-{socket.gethostname()}",
    }
    if cfg.password:
        kwargs["password"] = cfg.password.get_secret_value()
    if cfg.url.startswith("rediss://") and cfg.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = str(cfg.ssl_ca_certs)
    return redis.Redis.from_url(cfg.url, **kwargs)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to a handler, already validated."""

    stream: str
    entry_id: str
    event: AnyEvent


class Bus:
    """Publishing side of the streams, and the naming of their keys."""

    def __init__(self, client: redis.Redis, cfg: BusSettings) -> None:
        self.client = client
        self.cfg = cfg

    def key(self, stream: str) -> str:
        """The Redis key of `stream`."""
        return f"{self.cfg.prefix}:{stream}"

    def publish_many(self, stream: str, events: Sequence[Event]) -> list[str]:
        """XADD several events in one round trip (a non-transactional pipeline)."""
        if not events:
            return []
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.key(stream), event.to_fields(), maxlen=self.cfg.maxlen, approximate=True)  # type: ignore[arg-type]
        ids = [_text(i) for i in pipe.execute()]
        metrics.EVENTS_PUBLISHED.labels(stream=stream).inc(len(events))
        return ids

    def group_info(self, group: str, stream: str) -> dict[str, Any] | None:
        """XINFO GROUPS of `group` on `stream` (`pending`, `lag`, ...); None if either does not exist."""
        try:
            groups = self.client.xinfo_groups(self.key(stream))
        except redis.ResponseError:  # no such stream yet
            return None
        return next((g for g in groups if _text(g["name"]) == group), None)

    def unsettled(self, group: str, streams: Sequence[str]) -> int | None:
        """Entries of `streams` that `group` has not yet acknowledged (lag + pending); None before the
        group exists on every stream."""
        total = 0
        for stream in streams:
            info = self.group_info(group, stream)
            if info is None:
                return None
            total += int(info.get("lag") or 0) + int(info["pending"])
        return total

    def dead_letter(
        self, stream: str, entry_id: str, fields: dict[str, str], error: str, group: str, *, reason: str
    ) -> None:
        """Copy an entry to `<stream>:dlq` with the error it met; `reason` is its class (the metric's label:
        invalid, wrong_stream, clock_skew, handler_failed, redelivered).

        Each field is kept up to `dead_letter_max_chars` characters; a longer one is cut, with its original
        size in `original_<field>_bytes` and `truncated: 1`."""
        cap = self.cfg.dead_letter_max_chars
        record = {
            "stream": stream,
            "entry_id": entry_id,
            "group": group,
            "reason": reason,
            "error": error[:4000],
            "failed_at": str(time.time()),
        }
        for name, value in fields.items():
            record[f"original_{name}"] = value[:cap]
            if len(value) > cap:
                record[f"original_{name}_bytes"] = str(len(value.encode("utf-8", "surrogatepass")))
                record["truncated"] = "1"
        self.client.xadd(self.key(stream) + DLQ_SUFFIX, record, maxlen=self.cfg.maxlen, approximate=True)  # type: ignore[arg-type]
        metrics.DEAD_LETTERS.labels(stream=stream, group=group, reason=reason).inc()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if type(value) is bytes else str(value)


def _decode_fields(raw: dict[Any, Any] | None) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in (raw or {}).items()}


Handler = Callable[[list[Delivery]], None]


@dataclass
class Consumer:
    """Reads `streams` as member `name` of consumer group `group` and hands batches to `handler`.

    `handler` must commit everything it does for the batch (recording event ids, so that a redelivered
    event changes nothing) before returning; an exception leaves the entries pending for redelivery.
    """

    bus: Bus
    group: str
    name: str
    streams: Sequence[str]
    handler: Handler
    _groups_ready: bool = field(default=False, init=False)
    _drained: set[str] = field(default_factory=set, init=False)
    _last_claim: float = field(default=0.0, init=False)
    # A batch whose handler hit an infrastructure error, retried before anything else is read.
    _retry: list[Delivery] | None = field(default=None, init=False)

    @property
    def cfg(self) -> BusSettings:
        return self.bus.cfg

    def ensure_groups(self) -> None:
        """Create the group on every stream (from the start, so nothing published earlier is missed)."""
        for stream in self.streams:
            try:
                self.bus.client.xgroup_create(self.bus.key(stream), self.group, id="0", mkstream=True)
                log.info("consumer_group_created", stream=stream, group=self.group)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    def poll(self, *, block: bool = True) -> int:
        """Read and handle one round of entries; returns how many entries were settled (acked)."""
        if not self._groups_ready:
            self.ensure_groups()
        try:
            settled = 0
            if self._retry is not None:
                deliveries, self._retry = self._retry, None
                handled: dict[str, list[str]] = {}
                for delivery in self._handle(deliveries):
                    handled.setdefault(delivery.stream, []).append(delivery.entry_id)
                settled += self._ack(handled)
            for stream in self.streams:
                if stream not in self._drained:
                    settled += self._drain_own_pending(stream)
            if time.monotonic() - self._last_claim >= self.cfg.claim_interval_s:
                self._last_claim = time.monotonic()
                settled += self.claim_idle()
            settled += self._read_new(block=block and settled == 0)
            return settled
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                # The stream or group vanished: Redis restarted without persistence or the key was
                # deleted. Entries published meanwhile and not yet read are gone: say so loudly.
                log.warning(
                    "consumer_group_missing_possible_event_gap",
                    group=self.group,
                    error=str(exc),
                    consumer=self.name,
                )
                metrics.GROUP_RECREATED.labels(group=self.group).inc()
                self._groups_ready = False
                self._drained.clear()
                return 0
            raise

    def _drain_own_pending(self, stream: str) -> int:
        key = self.bus.key(stream)
        reply = self.bus.client.xreadgroup(self.group, self.name, {key: "0"}, count=self.cfg.batch_size)
        entries = _entries_of(reply)
        if not entries:
            self._drained.add(stream)
            return 0
        return self._settle({stream: entries}, redelivered=True)

    def claim_idle(self) -> int:
        """XAUTOCLAIM entries idle longer than `claim_idle_ms` (from dead consumers) and handle them."""
        settled = 0
        for stream in self.streams:
            key = self.bus.key(stream)
            start = "0-0"
            while True:
                reply = self.bus.client.xautoclaim(
                    key,
                    self.group,
                    self.name,
                    self.cfg.claim_idle_ms,
                    start_id=start,
                    count=self.cfg.batch_size,
                )
                start = _text(reply[0])
                entries = [(_text(i), f) for i, f in reply[1]]
                deleted = [_text(i) for i in (reply[2] if len(reply) > 2 else [])]
                if deleted:
                    # Trimmed while pending: nothing left to handle.
                    self.bus.client.xack(key, self.group, *deleted)
                    settled += len(deleted)
                if entries:
                    metrics.ENTRIES_CLAIMED.labels(stream=stream, group=self.group).inc(len(entries))
                    settled += self._settle({stream: entries}, redelivered=True)
                if start == "0-0":
                    break
        return settled

    def _read_new(self, *, block: bool) -> int:
        keys: dict[Any, Any] = {self.bus.key(s): ">" for s in self.streams}
        reply = self.bus.client.xreadgroup(
            self.group, self.name, keys, count=self.cfg.batch_size, block=self.cfg.block_ms if block else None
        )
        # The cyclic garbage collector is paused while the batch is settled. Its objects (entries, events,
        # deliveries, what the handler makes of them) are created together and die together at its end, and
        # thousands of them outnumber the collector's threshold: it scanned them, all alive, once or twice
        # per batch (the health worker over a backlog of 50,000 to 200,000 events: 5 to 7 % of its time).
        # The entries are released before it resumes, so that it finds them gone.
        with heap.collector_paused():
            try:
                return self._settle(self._in_stream_order(reply), redelivered=False)
            finally:
                del reply

    def _in_stream_order(self, reply: Any) -> dict[str, list[tuple[str, Any]]]:
        """The entries of an XREADGROUP reply by stream, in the consumer's stream order (e.g. asset specs
        before the events that use them)."""
        batches = {key.removeprefix(self.cfg.prefix + ":"): entries for key, entries in _streams_of(reply)}
        return {s: batches[s] for s in self.streams if s in batches}

    def _delivery_counts(self, key: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows = self.bus.client.xpending_range(key, self.group, min=ids[0], max=ids[-1], count=len(ids) + 100)
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    def _settle(self, batches: dict[str, list[tuple[str, Any]]], *, redelivered: bool) -> int:
        """Validate the entries of several streams, hand the valid ones to the handler in ONE call (one
        store transaction), dead-letter the rest, and acknowledge per stream.

        An entry delivered more than `max_deliveries` times is a suspect, not yet a dead letter: a worker
        killed again and again mid-batch redelivers good entries too. Suspects are handled one by one and
        dead-lettered only if their handler fails (or, for a poison that kills the process itself, once
        they were delivered `4 * max_deliveries` times)."""
        good: list[Delivery] = []
        suspects: list[tuple[Delivery, dict[str, str], int]] = []
        done: dict[str, list[str]] = {}
        max_deliveries = self.cfg.max_deliveries
        latest = latest_plausible(self.cfg.max_clock_skew_s)
        for stream, entries in batches.items():
            settled = done.setdefault(stream, [])
            allowed = STREAM_TYPES.get(stream)
            counts = (
                self._delivery_counts(self.bus.key(stream), [i for i, _ in entries]) if redelivered else {}
            )
            for entry_id, raw in entries:
                if not raw:
                    settled.append(entry_id)  # trimmed while pending
                    continue
                deliveries = counts.get(entry_id, 1)
                if deliveries > 4 * max_deliveries:
                    self.bus.dead_letter(
                        stream,
                        entry_id,
                        _decode_fields(raw),
                        f"delivered {deliveries} times without success",
                        self.group,
                        reason="redelivered",
                    )
                    settled.append(entry_id)
                    continue
                # The JSON is validated as the bytes Redis sent; the fields are decoded only for a dead
                # letter.
                payload = raw.get(b"event", raw.get("event"))
                try:
                    if payload is None:
                        raise ValueError("missing field 'event'")
                    delivery = Delivery(stream, entry_id, parse_event(payload))
                except (ValidationError, ValueError) as exc:
                    log.warning("event_invalid", stream=stream, entry_id=entry_id, error=str(exc)[:500])
                    self.bus.dead_letter(
                        stream,
                        entry_id,
                        _decode_fields(raw),
                        f"invalid event: {exc}",
                        self.group,
                        reason="invalid",
                    )
                    settled.append(entry_id)
                    continue
                # Valid, but not on this stream, or dated where no true event can be: dead-lettered now, never
                # handed to a handler (which could only fail on it, slowly, through redelivery).
                event = delivery.event
                if allowed is not None and event.type not in allowed:
                    reason, problem = "wrong_stream", wrong_stream(event, stream)
                else:
                    reason, problem = "clock_skew", implausible_time(event, latest)
                if problem is not None:
                    log.warning(
                        "event_rejected",
                        stream=stream,
                        entry_id=entry_id,
                        event_id=event.id,
                        event_type=event.type,
                        reason=reason,
                        error=problem,
                    )
                    self.bus.dead_letter(
                        stream, entry_id, _decode_fields(raw), problem, self.group, reason=reason
                    )
                    settled.append(entry_id)
                    continue
                if deliveries > max_deliveries:
                    suspects.append((delivery, _decode_fields(raw), deliveries))
                else:
                    good.append(delivery)
        try:
            for delivery in self._handle(good):
                done.setdefault(delivery.stream, []).append(delivery.entry_id)
            for delivery, fields, deliveries in suspects:
                try:
                    self.handler([delivery])
                except INFRASTRUCTURE_ERRORS:
                    raise
                except Exception as exc:
                    self.bus.dead_letter(
                        delivery.stream,
                        delivery.entry_id,
                        fields,
                        f"delivered {deliveries} times without success: {exc!r}"[:4000],
                        self.group,
                        reason="handler_failed",
                    )
                done.setdefault(delivery.stream, []).append(delivery.entry_id)
        finally:
            # Dead-lettered entries are acked even when the batch has to be retried.
            self._ack(done)
        return sum(len(ids) for ids in done.values())

    def _ack(self, done: dict[str, list[str]]) -> int:
        acked = 0
        for stream, entry_ids in done.items():
            if entry_ids:
                self.bus.client.xack(self.bus.key(stream), self.group, *entry_ids)
                metrics.EVENTS_CONSUMED.labels(stream=stream, group=self.group).inc(len(entry_ids))
                acked += len(entry_ids)
        return acked

    def _handle(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Run the handler on the batch; on failure, isolate the failing entries by halving the batch (a
        poison among thousands costs a few dozen handler calls, not one transaction per entry)."""
        if not deliveries:
            return []
        try:
            with metrics.HANDLER_SECONDS.labels(group=self.group).time():
                self.handler(deliveries)
            return deliveries
        except INFRASTRUCTURE_ERRORS:
            self._retry = deliveries
            raise
        except Exception:
            if len(deliveries) == 1:
                d = deliveries[0]
                log.exception("handler_failed", stream=d.stream, entry_id=d.entry_id, event_id=d.event.id)
                metrics.HANDLER_FAILURES.labels(group=self.group).inc()
                return []
        middle = len(deliveries) // 2
        return self._handle(deliveries[:middle]) + self._handle(deliveries[middle:])


def _streams_of(reply: Any) -> list[tuple[str, list[tuple[str, Any]]]]:
    # RESP2 reply (see connect): [[stream, [(id, fields), ...]], ...]
    return [(_text(stream), [(_text(i), f) for i, f in entries]) for stream, entries in reply or []]


def _entries_of(reply: Any) -> list[tuple[str, Any]]:
    return [entry for _, entries in _streams_of(reply) for entry in entries]


def backoff_delays(base: float = 0.2, cap: float = 10.0) -> Iterator[float]:
    """Exponential backoff with full jitter: an endless sequence of sleep durations."""
    attempt = 0
    while True:
        yield random.uniform(0, min(cap, base * 2**attempt))
        attempt += 1
