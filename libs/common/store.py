"""The store base: one SQLite database per service, in WAL mode, with versioned migrations.

Writers start with `BEGIN IMMEDIATE` so that a transaction never fails half-way on a lock upgrade; readers
see a consistent snapshot. `claim_events` records event ids inside the writer's transaction, so a
redelivered event is recognised and changes nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

from libs.common.log import get_logger
from libs.common.settings import Settings, StoreName
from libs.common.sql import Connection, split_statements

Item = TypeVar("Item")

log = get_logger(__name__)

# Workers checkpoint from a background thread (Worker's store_checkpoint job), so a commit on the consume
# loop only appends to the log: measured on the health worker, commit time per event halved (11 -> 6 us)
# since the pages rewritten by consecutive batches are copied once. A commit still checkpoints by itself
# when the log passes this many pages (~40 MB), and the log file is cut back to the size limit afterwards.
_WAL_AUTOCHECKPOINT_PAGES = 10_000
_WAL_SIZE_LIMIT_BYTES = 64 * 2**20
# Page cache per connection. Event ids are random keys: once processed_events outgrows SQLite's default 2 MiB
# cache, every claim reads B-tree pages back from the OS (health at 200k events: claim 8.5 -> 5.7 us per
# event with 16 MiB; the cache grows only as far as it is used).
_PAGE_CACHE_KIB = 16 * 1024

# processed_events keys on SQLite: a canonical UUID (every event id this system makes) is stored as its 16
# bytes, any other id as its text. Random keys spread every batch over the whole B-tree; at less than half
# the size per key, each commit rewrites half as many pages (measured at 100k-200k ids: 9.0 -> 4.1 us of
# commit per event). `PRAGMA user_version` >= 1 marks a store whose keys are in this form.
_KEY_FORMAT_VERSION = 1


def event_key(event_id: str) -> str | bytes:
    """The processed_events key of `event_id` in a SQLite store (see `stored_event_id` for the way back)."""
    if len(event_id) == 36 and event_id[8] == event_id[13] == event_id[18] == event_id[23] == "-":
        digits = event_id.replace("-", "")
        if len(digits) == 32:
            try:
                raw = bytes.fromhex(digits)
            except ValueError:
                return event_id
            if raw.hex() == digits:  # lowercase only: "ABC…" and "abc…" are different ids
                return raw
    return event_id


def stored_event_id(key: str | bytes) -> str:
    """The event id a processed_events key stands for."""
    if isinstance(key, bytes):
        h = key.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return key


_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS processed_events (
    event_id TEXT PRIMARY KEY,
    processed_at REAL NOT NULL
) WITHOUT ROWID;
-- Retention scans processed_events once an hour; an index on processed_at cost every event a second B-tree
-- insert (measured: ~1 us of the health worker's ~31 us per event). Stores made before drop it here.
DROP INDEX IF EXISTS processed_events_at;
CREATE TABLE IF NOT EXISTS event_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class StoreError(Exception):
    """The store cannot be opened or migrated."""


@dataclass(frozen=True)
class Migration:
    """One schema step; `sql` may hold several statements."""

    version: int
    name: str
    sql: str


def sqlite_path(url: str) -> Path:
    """The file path of a `sqlite:///path` URL (a bare path is accepted too)."""
    if "://" not in url:
        return Path(url)
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise StoreError(
            f"unsupported store URL scheme {parsed.scheme!r} in {url!r} (expected sqlite:///path)"
        )
    # sqlite:////abs/path and sqlite:///rel/path, as SQLAlchemy spells them
    return Path(unquote(parsed.path[1:] if parsed.path.startswith("//") else parsed.path))


def is_postgres(url: str) -> bool:
    """True for `postgresql://` (or `postgres://`) store URLs."""
    return url.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://"))


class Store:
    """A service's database: thread-local connections, single-writer transactions, migrations at open.

    SQLite (the default) or, for a deployment that runs several replicas of a worker, PostgreSQL through
    the same API (see `libs.common.pg`): services write portable SQL (`?` placeholders, `ON CONFLICT`).
    """

    def __init__(
        self,
        url: str,
        migrations: Sequence[Migration] = (),
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.dialect = "postgresql" if is_postgres(url) else "sqlite"
        self.path = (
            Path(urlparse(url).path.lstrip("/") or "postgres")
            if self.dialect == "postgresql"
            else sqlite_path(url)
        )
        self.migrations = sorted(migrations, key=lambda m: m.version)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()
        if migrate:
            self.migrate()

    @classmethod
    def from_settings(
        cls, settings: Settings, name: StoreName, migrations: Sequence[Migration], *, migrate: bool = True
    ) -> Store:
        """The service store `name` as configured (`stores.<name>_url`, `stores.synchronous`, busy
        timeout)."""
        return cls(
            settings.store_url(name),
            migrations,
            synchronous=settings.stores.synchronous,
            busy_timeout_ms=settings.stores.busy_timeout_ms,
            migrate=migrate,
        )

    def connection(self) -> Connection:
        """This thread's connection (opened on first use)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open_postgres() if self.dialect == "postgresql" else self._open_sqlite()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _open_postgres(self) -> Connection:
        # Imported here: psycopg2 is an optional dependency, needed only for PostgreSQL stores.
        from libs.common.pg import PgConnection

        return PgConnection(self.url)

    def _open_sqlite(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT_BYTES}")
        conn.execute(f"PRAGMA cache_size=-{_PAGE_CACHE_KIB}")
        return conn

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed pages from the write-ahead log into the database file without blocking writers
        (SQLite's PASSIVE checkpoint); returns the log's frames and how many of them are now copied
        (nothing to do on PostgreSQL: (0, 0))."""
        if self.dialect != "sqlite":
            return 0, 0
        _busy, frames, copied = self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames), int(copied)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A writer transaction (`BEGIN IMMEDIATE` … `COMMIT`, rolled back on error)."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")  # PgConnection: BEGIN + a transaction-scoped advisory lock
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: every query inside sees the same snapshot."""
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")

    def migrate(self) -> list[int]:
        """Apply pending migrations in order; returns the versions applied."""
        conn = self.connection()
        try:
            if self.dialect == "postgresql":
                # Replicas start together: create the base tables under the writers' lock.
                with self.write() as tx:
                    for statement in split_statements(_BOOTSTRAP):
                        tx.execute(statement)
            else:
                conn.executescript(_BOOTSTRAP)
                self._convert_event_keys()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        applied: list[int] = []
        with self.write() as tx:
            done = {row[0] for row in tx.execute("SELECT version FROM schema_migrations")}
            newest = max(done, default=0)
            known = max((m.version for m in self.migrations), default=0)
            if newest > known:
                raise StoreError(
                    f"store {self.path} is at schema version {newest}, newer than this code knows ({known})"
                )
            for migration in self.migrations:
                if migration.version in done:
                    continue
                for statement in split_statements(migration.sql):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                applied.append(migration.version)
        if applied:
            log.info("store_migrated", store=str(self.path), versions=applied)
        return applied

    def _convert_event_keys(self) -> None:
        """Store the processed-event ids of a store made before `_KEY_FORMAT_VERSION` in the current form
        (once; an id already recorded must still be recognised when it is delivered again)."""
        with self.write() as tx:
            if tx.execute("PRAGMA user_version").fetchone()[0] >= _KEY_FORMAT_VERSION:
                return
            rows = tx.execute(
                "SELECT event_id, processed_at FROM processed_events WHERE typeof(event_id) = 'text'"
            ).fetchall()
            converted = [(text, key, at) for text, at in rows if (key := event_key(text)) != text]
            tx.executemany(
                "DELETE FROM processed_events WHERE event_id = ?", [(text,) for text, _, _ in converted]
            )
            tx.executemany(
                "INSERT OR IGNORE INTO processed_events (event_id, processed_at) VALUES (?, ?)",
                [(key, at) for _, key, at in converted],
            )
            tx.execute(f"PRAGMA user_version = {_KEY_FORMAT_VERSION}")
        if converted:
            log.info("processed_event_keys_converted", store=str(self.path), converted=len(converted))

    def schema_version(self) -> int:
        """The newest applied migration version."""
        row = self.connection().execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    @staticmethod
    def claim_events(conn: Connection, event_ids: Sequence[str]) -> set[str]:
        """Record `event_ids` as processed within the caller's transaction; returns those not seen before."""
        if not event_ids:
            return set()
        unique = list(dict.fromkeys(event_ids))
        # PostgreSQL keeps the ids as text (its key column is TEXT, and its writes are not the bottleneck).
        keys: list[str | bytes] = (
            [event_key(e) for e in unique] if isinstance(conn, sqlite3.Connection) else list(unique)
        )
        now = time.time()
        # Redeliveries are rare: insert every id at once, and look up which were seen only if that fails.
        conn.execute("SAVEPOINT claim_events")
        try:
            conn.executemany(
                "INSERT INTO processed_events (event_id, processed_at) VALUES (?, ?)",
                [(k, now) for k in keys],
            )
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO SAVEPOINT claim_events")
        else:
            conn.execute("RELEASE SAVEPOINT claim_events")
            return set(unique)
        conn.execute("RELEASE SAVEPOINT claim_events")
        seen: set[str | bytes] = set()
        for chunk_start in range(0, len(keys), 500):
            chunk = keys[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            seen.update(
                r[0]
                for r in conn.execute(
                    f"SELECT event_id FROM processed_events WHERE event_id IN ({marks})", chunk
                )
            )
        fresh = [(e, k) for e, k in zip(unique, keys, strict=True) if k not in seen]
        conn.executemany(
            "INSERT INTO processed_events (event_id, processed_at) VALUES (?, ?)",
            [(k, now) for _, k in fresh],
        )
        return {e for e, _ in fresh}

    @staticmethod
    def claim_new(conn: Connection, items: Sequence[Item], event_id: Callable[[Item], str]) -> list[Item]:
        """The items whose event was not processed before, each event once (the first of its copies in the
        batch: a producer's retry after a lost reply puts both in one batch), in order; claims them."""
        fresh = Store.claim_events(conn, [event_id(i) for i in items])
        if len(fresh) == len(items):  # every id distinct and new: the usual batch
            return list(items)
        new = []
        for item in items:
            key = event_id(item)
            if key in fresh:
                fresh.discard(key)
                new.append(item)
        return new

    @staticmethod
    def forget_events(conn: Connection, event_ids: Sequence[str]) -> int:
        """Drop `event_ids` from processed_events in the caller's transaction (their effects were removed, so
        the same events published again must be processed again); returns how many were recorded."""
        keys: list[str | bytes] = (
            [event_key(e) for e in event_ids] if isinstance(conn, sqlite3.Connection) else list(event_ids)
        )
        forgotten = 0
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            forgotten += conn.execute(
                f"DELETE FROM processed_events WHERE event_id IN ({marks})", chunk
            ).rowcount
        return forgotten

    def prune_processed(self, older_than_s: float) -> int:
        """Forget processed-event ids older than `older_than_s` seconds; returns how many."""
        with self.write() as tx:
            cur = tx.execute(
                "DELETE FROM processed_events WHERE processed_at < ?", (time.time() - older_than_s,)
            )
            return cur.rowcount

    def ping(self) -> None:
        """Raise if the store cannot be read (used by /readyz)."""
        if self.dialect == "postgresql":
            from libs.common.pg import PgConnection

            probe = PgConnection(self.url, connect_timeout=2)
            try:
                probe.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()
            finally:
                probe.close()
            return
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=2)
        try:
            conn.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()
        finally:
            conn.close()

    def backup(self, destination: Path) -> Path:
        """A consistent online copy of the database through SQLite's backup API."""
        if self.dialect == "postgresql":
            raise StoreError("backups of a PostgreSQL store are made with pg_dump, not by asset-manager")
        destination.parent.mkdir(parents=True, exist_ok=True)
        source = self._open_sqlite()
        target = sqlite3.connect(destination)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return destination

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for conn in self._all:
                with suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()
