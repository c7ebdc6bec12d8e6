"""The health service's in-memory copy of health.db: per asset its history, its last state, its resolved
thresholds and the results that depend on its history alone, least recently used first, bounded by an
estimate of the memory it holds (`health.cache_mb`).

A cache and nothing else: it reads through the loaders it is given, writes no SQL and emits no metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from libs.common.events import CheckResult
from services.health.decide import HealthState
from services.health.model import AssetHistory
from services.health.thresholds import Resolved

# Estimated bytes: an entry's fixed part (history object, spec copy, dict slots, state, thresholds), one
# history record (a slotted dataclass with its floats and strings), and the memoised history-only results.
# Measured with tracemalloc (assets with 10 and 90 materializations, after an evaluation): 13.1 and 35.8 KB.
ENTRY_BYTES = 5_300
RECORD_BYTES = 285
MEMO_BYTES = 5_000


@dataclass(slots=True)
class Memo:
    """Results of the checks that depend only on the history (valid while `version` and `resolved` are)."""

    version: int
    resolved: Resolved
    results: dict[str, CheckResult]


@dataclass(slots=True)
class Entry:
    history: AssetHistory
    state: HealthState | None = None
    resolved: tuple[object, Resolved] | None = None  # (the spec it was resolved for, the thresholds)
    memo: Memo | None = None
    size: int = 0


def estimate(entry: Entry) -> int:
    h = entry.history
    records = len(h.materializations) + len(h.executions) + len(h.failures)
    return ENTRY_BYTES + RECORD_BYTES * records + (MEMO_BYTES if entry.memo is not None else 0)


class HistoryCache:
    """Entries by asset key, evicting the least recently used beyond `budget_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0

    def peek(self, key: str) -> Entry | None:
        """The entry of `key` if cached (its place in the order unchanged)."""
        return self._entries.get(key)

    def entry(self, key: str, load: Callable[[str], AssetHistory]) -> Entry:
        """The entry of `key` (most recently used now), loading its history on a miss."""
        entry = self._entries.get(key)
        if entry is None:
            entry = Entry(load(key))
            self._entries[key] = entry
            self.resize(entry)
        else:
            self._entries.move_to_end(key)
        return entry

    def resize(self, entry: Entry) -> None:
        """Account for a change of `entry`'s history or memo; evict the oldest others beyond the budget. An
        entry not in the cache (one the caller made for a single evaluation) is left alone."""
        if self._entries.get(entry.history.key) is not entry:
            return
        size = estimate(entry)
        self.used += size - entry.size
        entry.size = size
        while self.used > self.budget and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self.used -= evicted.size
            if evicted is entry:  # never evict what the caller holds: put it back as the newest
                self._entries[entry.history.key] = entry
                self.used += entry.size
