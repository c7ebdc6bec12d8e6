"""The throughput floor: raw redis-py XREADGROUP COUNT 1000 + JSON decode + SQLite executemany + XACK.

Imported by bench/pipeline.py (measured in the same run as the workers) and runnable alone:
`python bench/floor.py [--events N] [--redis-url URL]` prints `{"floor_eps": ...}` as its last line.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.events import AssetMaterialized, MaterializationData, new_event


def sample_payloads(n: int) -> list[dict[str, str]]:
    """N realistic materialization events as stream fields."""
    out = []
    for i in range(n):
        event = new_event(
            AssetMaterialized,
            "asset.materialized",
            identity=f"floor-{i}",
            data=MaterializationData(
                asset_key=f"asset_{i % 200}",
                run_id=f"run-{i}",
                storage_id=i,
                row_count=1000 + i % 50,
                duration_s=1.5,
            ),
            source="bench",
        )
        out.append(event.to_fields())
    return out


def measure_floor(client: redis.Redis, n: int, *, synchronous: str = "FULL") -> float:
    """Events/s of the raw consume loop over `n` events on `client`'s server."""
    key = f"floor-{uuid.uuid4().hex[:8]}"
    payloads = sample_payloads(n)
    pipe = client.pipeline(transaction=False)
    for fields in payloads:
        pipe.xadd(key, fields)  # type: ignore[arg-type]
    pipe.execute()
    client.xgroup_create(key, "floor", id="0")
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("CREATE TABLE events (id TEXT PRIMARY KEY, type TEXT, asset TEXT, rows INTEGER)")
        done = 0
        start = time.perf_counter()
        while done < n:
            # redis-py types a reply as a union of every RESP shape; RESP2 gives [[key, [(id, fields)]]]
            reply: Any = client.xreadgroup("floor", "c", {key: ">"}, count=1000)
            entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
            rows = []
            for _, entry in entries:
                event = json.loads(entry[b"event"])
                rows.append(
                    (event["id"], event["type"], event["data"]["asset_key"], event["data"]["row_count"])
                )
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            client.xack(key, "floor", *[i for i, _ in entries])
            done += len(entries)
        elapsed = time.perf_counter() - start
        db.close()
    client.delete(key)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    from libs.common.redis_server import LocalRedis

    server = None
    url = args.redis_url
    if url is None:
        server = LocalRedis().start()
        url = server.url
    try:
        client = redis.Redis.from_url(url, protocol=2)
        print(json.dumps({"events": args.events, "floor_eps": round(measure_floor(client, args.events), 1)}))
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
