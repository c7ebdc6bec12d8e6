"""Watching the watcher: the alerts worker reads the publishers' heartbeats from the automation stream itself.

If the publishing sensor stops (its ticks fail, the Dagster daemon is down) no event reaches any worker, and
the health service may itself be down; so the alerts worker asks Redis directly, every
`alerts.publisher_watch_interval_s`: the newest entries of `<prefix>:automation` (XREVRANGE, down to the
last entry it read) and Redis's own clock (TIME). A heartbeat's time is its entry id's (Redis's clock too),
so neither host's clock skew counts. `AlertService.publisher_heartbeats` turns what this returns into the
alert `publisher:<code location>` / `heartbeat` of the ordinary state machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from libs.common.log import get_logger

log = get_logger(__name__)
HEARTBEAT_TYPE = "automation.publisher_heartbeat"
# Entries read per pass: the newest heartbeat of every code location is among them unless a pass falls
# further behind than this (then the next passes catch up from the newest entries anyway).
SCAN = 1000


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A code location's newest publisher heartbeat: when Redis stored it, and the publisher's interval."""

    code_location: str
    at: float
    interval_s: float | None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def entry_time(entry_id: str) -> float:
    """The time (epoch seconds, Redis's clock) of an auto-generated stream entry id `<ms>-<seq>`."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


class PublisherWatch:
    """The heartbeats seen so far per code location, brought up to date from Redis by `read`."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self.seen: dict[str, Heartbeat] = {}
        self._last_id: str | None = None

    def read(self) -> float:
        """Read the entries added since the last call; returns Redis's current time (epoch seconds)."""
        seconds, micros = self.client.time()
        low = "-" if self._last_id is None else f"({self._last_id}"
        entries: list[Any] = list(self.client.xrevrange(self.key, "+", low, count=SCAN) or [])
        for raw_id, raw_fields in reversed(entries):  # oldest first: the newest heartbeat wins
            entry_id = _text(raw_id)
            self._last_id = entry_id
            fields = {_text(k): v for k, v in (raw_fields or {}).items()}
            if _text(fields.get("type")) != HEARTBEAT_TYPE:
                continue
            beat = self._parse(fields.get("event"))
            if beat is not None:
                location, interval = beat
                self.seen[location] = Heartbeat(location, entry_time(entry_id), interval)
        return int(seconds) + int(micros) / 1e6

    @staticmethod
    def _parse(raw: bytes | str | None) -> tuple[str, float | None] | None:
        """(code location, interval) of a heartbeat entry; None for one that cannot be read (the consumers
        dead-letter it; here it is simply not a heartbeat)."""
        try:
            data = json.loads(raw or b"")["data"]
            location = str(data["code_location"])
            interval = data.get("interval_s")
            return location, float(interval) if isinstance(interval, int | float) else None
        except (ValueError, KeyError, TypeError):
            log.warning("publisher_heartbeat_unreadable")
            return None


def heartbeat_limit(
    beat: Heartbeat, intervals: float, minimum_s: float, default_interval_s: float = 30.0
) -> float:
    """How old a heartbeat may be before its publisher is late: `intervals` times its interval (Dagster's
    default sensor interval when it does not say), at least `minimum_s`."""
    return max(intervals * (beat.interval_s or default_interval_s), minimum_s)
