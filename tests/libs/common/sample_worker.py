"""A minimal service on the real worker runtime, run as a process by the worker and fault tests.

It records every run event once in SAMPLE_DB (table runs) and takes SAMPLE_DELAY_S per batch.
"""

from __future__ import annotations

import os
import sys
import time

from libs.common import worker as worker_runtime
from libs.common.bus import Delivery
from libs.common.events import RUNS
from libs.common.log import configure_logging
from libs.common.settings import Settings, load_settings
from libs.common.store import Migration, Store
from libs.common.worker import Worker

MIGRATIONS = [Migration(1, "runs", "CREATE TABLE runs (event_id TEXT PRIMARY KEY, run_id TEXT NOT NULL)")]


def main() -> int:
    settings = load_settings(Settings)
    configure_logging(settings, service="sample")
    store = Store(os.environ["SAMPLE_DB"], MIGRATIONS)
    delay = float(os.environ.get("SAMPLE_DELAY_S", "0"))

    def handle(deliveries: list[Delivery]) -> None:
        with store.write() as tx:
            by_id = {d.event.id: d.event for d in deliveries}
            tx.executemany(
                "INSERT INTO runs (event_id, run_id) VALUES (?, ?)",
                [(i, by_id[i].data.run_id) for i in Store.claim_events(tx, list(by_id))],  # type: ignore[union-attr]
            )
        time.sleep(delay)

    # the single-consumer lease of a SQLite store, shortened for the tests that start a second consumer
    worker_runtime.LEASE_TTL_S = float(os.environ.get("SAMPLE_LEASE_TTL_S", worker_runtime.LEASE_TTL_S))
    worker = Worker(
        service="sample",
        settings=settings,
        store=store,
        streams=[RUNS],
        handler=handle,
        port=int(os.environ.get("SAMPLE_PORT", "0")),
    )
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
