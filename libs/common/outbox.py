"""Transactional outbox for the events a service derives from the events it consumes.

A handler stages derived events in the same store transaction that records its input as processed; after
the commit they are published and removed. If the process dies in between, the next flush (at start, after
every batch, and periodically) publishes them: nothing derived is lost, and deterministic ids make a
republish recognisable downstream.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from libs.common.bus import Bus
from libs.common.events import Event
from libs.common.sql import Connection
from libs.common.store import Store


def stage(conn: Connection, stream: str, events: Sequence[Event]) -> None:
    """Queue `events` for `stream` inside the caller's write transaction."""
    now = time.time()
    conn.executemany(
        "INSERT INTO event_outbox (stream, event_id, event_type, payload, created_at) VALUES (?, ?, ?, ?, ?)",
        [(stream, e.id, e.type, e.model_dump_json(), now) for e in events],
    )


def flush(store: Store, bus: Bus, *, batch: int = 500) -> int:
    """Publish staged events in order and delete them; returns how many were published."""
    published = 0
    conn = store.connection()
    while True:
        rows = conn.execute(
            "SELECT seq, stream, event_type, payload FROM event_outbox ORDER BY seq LIMIT ?", (batch,)
        ).fetchall()
        if not rows:
            return published
        pipe = bus.client.pipeline(transaction=False)
        for row in rows:
            pipe.xadd(
                bus.key(row["stream"]),
                {"event": row["payload"], "type": row["event_type"]},
                maxlen=bus.cfg.maxlen,
                approximate=True,
            )
        pipe.execute()
        with store.write() as tx:
            tx.execute("DELETE FROM event_outbox WHERE seq <= ?", (rows[-1]["seq"],))
        published += len(rows)


def pending(store: Store) -> int:
    """How many staged events wait to be published."""
    return int(store.connection().execute("SELECT COUNT(*) FROM event_outbox").fetchone()[0])
