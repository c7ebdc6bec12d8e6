"""The publishing sensor on a PostgreSQL-backed Dagster instance (real PostgreSQL, real Redis).

Concurrent runs in separate processes write the event log while the publisher ticks; every materialization
and every run outcome must reach the streams exactly once. A commit made out of order on purpose (a
transaction that takes its storage id, then commits after later events were already published) must still
be published, which a plain "after id N" cursor misses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, EventRecordsFilter

from libs.common.bus import Bus
from libs.common.events import ASSETS, RUNS, parse_event
from orchestrator.sensors import EventPublisher, PublisherCursor, default_window
from orchestrator.settings import OrchestratorSettings

ROOT = Path(__file__).resolve().parents[2]

ASSETS_CODE = """
import os
import dagster as dg

@dg.asset
def pg_orders() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"dagster/row_count": 10})

@dg.asset(deps=[pg_orders])
def pg_report() -> dg.MaterializeResult:
    if os.environ.get("PG_FAIL") == "1":
        raise RuntimeError("report failed on purpose")
    return dg.MaterializeResult(metadata={"dagster/row_count": 3})

@dg.multi_asset(specs=[dg.AssetSpec("pg_a", deps=[pg_orders]), dg.AssetSpec("pg_b", deps=[pg_orders])])
def pg_pair():
    yield dg.MaterializeResult(asset_key="pg_a")
    yield dg.MaterializeResult(asset_key="pg_b")

defs = dg.Definitions(assets=[pg_orders, pg_report, pg_pair])
"""

RUNNER = """
import os, sys
import dagster as dg
sys.path.insert(0, sys.argv[1])
from pg_assets import defs
job = defs.resolve_implicit_global_asset_job_def()
instance = dg.DagsterInstance.get()
for i in range(int(sys.argv[2])):
    os.environ["PG_FAIL"] = "1" if (int(sys.argv[3]) + i) % 3 == 0 else "0"
    job.execute_in_process(instance=instance, raise_on_error=False)
"""


@pytest.fixture
def pg_home(tmp_path: Path, postgres_url: str) -> Iterator[Path]:
    """A DAGSTER_HOME whose dagster.yaml puts runs, the event log and schedules in PostgreSQL."""
    home = tmp_path / "pg_home"
    home.mkdir()
    url = postgres_url.replace(
        "postgresql://", "postgresql+psycopg2://", 1
    )  # SQLAlchemy's default is psycopg 3
    (home / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {url}\n")
    code = tmp_path / "code"
    code.mkdir()
    (code / "pg_assets.py").write_text(textwrap.dedent(ASSETS_CODE))
    yield home


def published(client: redis.Redis, prefix: str, stream: str) -> list[Any]:
    return [parse_event(fields[b"event"]) for _, fields in client.xrange(f"{prefix}:{stream}")]


def test_concurrent_runs_and_a_late_commit_are_published_exactly_once(
    pg_home: Path,
    postgres_url: str,
    settings: OrchestratorSettings,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(pg_home))
    instance = DagsterInstance.get()
    assert default_window(instance) > 0  # PostgreSQL: the late-commit window is on
    bus = Bus(redis_client, settings.bus)
    publisher = EventPublisher(instance, bus, code_location="pg", page_size=7)  # small pages: many boundaries
    cursor = PublisherCursor()

    # 1. Three processes run jobs concurrently while the publisher ticks.
    env = {**os.environ, "DAGSTER_HOME": str(pg_home), "PYTHONPATH": str(ROOT)}
    code_dir = str(pg_home.parent / "code")
    runners = [
        subprocess.Popen([sys.executable, "-c", RUNNER, code_dir, "2", str(n)], env=env) for n in range(3)
    ]
    try:
        while any(p.poll() is None for p in runners):
            cursor = publisher.run_tick(cursor).cursor
            time.sleep(0.05)  # leave the CPU to the runs between ticks
    finally:
        codes = [p.wait(300) for p in runners]
    assert codes == [0, 0, 0]
    for _ in range(3):  # caught up, and further ticks publish nothing new
        cursor = publisher.run_tick(cursor).cursor

    # 2. A transaction takes its storage id, later events commit and are published, then it commits.
    storage: Any = instance.event_log_storage
    template = next(
        iter(
            storage.get_event_records(
                EventRecordsFilter(event_type=DagsterEventType.ASSET_MATERIALIZATION), limit=1
            )
        )
    ).event_log_entry
    plain_prefix = "plain-" + settings.bus.prefix
    plain = EventPublisher(
        instance,
        Bus(redis_client, settings.bus.model_copy(update={"prefix": plain_prefix})),
        code_location="pg",
        late_commit_window=0,
    )  # a plain "after id N" cursor
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.connect() as conn:
        transaction = conn.begin()
        late_id = int(
            conn.execute(sa.text("SELECT nextval(pg_get_serial_sequence('event_logs', 'id'))")).scalar_one()
        )
        subprocess.run([sys.executable, "-c", RUNNER, code_dir, "1", "1"], env=env, check=True)
        plain_cursor = plain.run_tick(cursor).cursor
        cursor = publisher.run_tick(cursor).cursor
        assert cursor.positions["materialized"] > late_id  # both cursors moved past the open transaction
        assert plain_cursor.positions["materialized"] > late_id
        conn.execute(storage.prepare_insert_event(template).values(id=late_id))
        transaction.commit()
    engine.dispose()
    # The plain cursor passes over the late commit for good ...
    plain.run_tick(plain_cursor)
    assert late_id not in {
        e.data.storage_id
        for e in published(redis_client, plain_prefix, ASSETS)
        if e.type == "asset.materialized"
    }
    # ... the windowed cursor publishes it, once.
    for _ in range(2):
        cursor = publisher.run_tick(cursor).cursor

    # 3. Exactly once: every materialization record and every run outcome, no duplicate.
    records = storage.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_MATERIALIZATION), limit=10_000
    )
    assets = published(redis_client, settings.bus.prefix, ASSETS)
    materialized = [e for e in assets if e.type == "asset.materialized"]
    assert Counter(e.id for e in materialized).most_common(1)[0][1] == 1
    assert sorted(e.data.storage_id for e in materialized) == sorted(r.storage_id for r in records)
    assert late_id in {e.data.storage_id for e in materialized}
    failures = [e for e in assets if e.type == "asset.materialization_failed"]
    assert failures and len({e.id for e in failures}) == len(failures)
    runs = published(redis_client, settings.bus.prefix, RUNS)
    assert len({e.id for e in runs}) == len(runs)
    outcomes = Counter(e.type for e in runs if e.type != "run.started")
    finished = instance.get_run_records()
    assert len(finished) == 7
    assert sum(outcomes.values()) == 7
    assert outcomes["run.failed"] == sum(1 for r in finished if r.dagster_run.is_failure)
    assert sum(1 for e in runs if e.type == "run.started") == 7
