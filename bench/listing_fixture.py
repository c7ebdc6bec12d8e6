"""Stores for timing the CLI at scale without a worker: metadata.db and health.db as `bench/scale.py` leaves
them (its catalog, its cadences, `--days` of materializations per asset, every asset evaluated once), written
through the services' own store code instead of through Redis and a worker (minutes instead of 40 at 50,000
assets x 90 days).

- metadata.db: `scale.catalog(n)` registered with discovery's `register_snapshot`
- health.db: the asset.registered events as the health worker records them (`record.facts_of`,
  `store.write_facts`); the history a day at a time as `write_facts` rows, each event id claimed in
  `processed_events` as the worker does; then one `HealthService.evaluate_all()` (the first pass after a
  start: every asset evaluated, check results, health rows, last materialization)

    python bench/listing_fixture.py --dir /tmp/ams-listing --assets 50000 --days 90

then time the CLI against it as `bench/scale.py` does (`asset-health KEY`, `asset-health --status FAILED`,
`list-assets --format json` as ratios to `asset-manager --help`, medians of `--cli-repeat` runs), reusing the
stores already built:

    python bench/listing_fixture.py --dir /tmp/ams-listing --assets 50000 --reuse --cli-repeat 5

or by hand (the data dir is DAGSTER_HOME, as in `bench/scale.py`):

    DAGSTER_HOME=/tmp/ams-listing ENVIRONMENT=production asset-manager list-assets --format json

Prints one JSON object (counts, seconds, sizes, CLI ratios) on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scale import DAY, SOURCE, cadences, catalog, cli_time  # noqa: E402
from libs.common.events import CatalogSnapshotData, event_id  # noqa: E402
from libs.common.store import Store  # noqa: E402

HISTORY_END_S = 600.0  # as `bench/scale.py --history-end-s`: the history ends this long before now


def build(
    directory: Path, assets: int, days: float, hourly_pct: float, six_hourly_pct: float, seed: int
) -> dict[str, object]:
    # The settings are read from the environment as every process does; the stores go to `directory`.
    os.environ.update(
        {
            "DAGSTER_HOME": str(directory),
            "ENVIRONMENT": "production",
            "AMS_LOGGING__LEVEL": "WARNING",
            "AMS_LOGGING__FILE": str(directory / "system.log"),
            # A fixture: a power cut while building it loses nothing that matters (OFF is not allowed).
            "AMS_STORES__SYNCHRONOUS": "NORMAL",
        }
    )
    from libs.common.settings import load_settings
    from services.discovery.registry import register_snapshot, to_events
    from services.discovery.store import open_store as open_metadata
    from services.health import record
    from services.health import store as health_db
    from services.health.model import Materialization
    from services.health.service import HealthService
    from services.health.settings import HealthWorkerSettings

    rng = random.Random(seed)
    settings = load_settings(HealthWorkerSettings)
    out: dict[str, object] = {"dir": str(directory), "assets": assets, "days": days}

    started = time.perf_counter()
    specs = catalog(assets)
    metadata = open_metadata(settings)
    with metadata.write() as conn:
        changes = register_snapshot(
            conn, CatalogSnapshotData(code_location="scale", fingerprint="scale-1", assets=specs)
        )
    metadata.close()
    out["metadata_s"] = round(time.perf_counter() - started, 1)

    store = health_db.open_store(settings)
    registered = to_events(changes, source=SOURCE)
    now = time.time()
    with store.write() as conn:
        Store.claim_events(conn, [e.id for e in registered])
        health_db.write_facts(conn, record.facts_of(registered), now)

    # The history: the same draws as `scale.publish_history`, written a day per transaction.
    started = time.perf_counter()
    end = now - HISTORY_END_S
    periods = cadences(assets, hourly_pct, six_hourly_pct, rng)
    base_rows = [rng.randint(1_000, 1_000_000) for _ in specs]
    base_s = [rng.uniform(5, 600) for _ in specs]
    phase = [rng.uniform(0, p) for p in periods]
    count = 0
    day = end - days * DAY
    while day < end:
        facts = record.Facts()
        for i, period in enumerate(periods):
            t = day + phase[i] % period
            while t < min(day + DAY, end):
                rows = max(0, int(rng.gauss(base_rows[i], base_rows[i] * 0.05)))
                duration = round(max(1.0, rng.gauss(base_s[i], base_s[i] * 0.1)), 3)
                key = specs[i].key
                run_id = f"h-{i}-{int(t)}"
                facts.materializations.append(
                    record.MaterializationFact(
                        event_id("asset.materialized", f"{key}:{run_id}"),
                        key,
                        Materialization(t, run_id, rows, duration),
                    )
                )
                t += period
        facts.materializations.sort(key=lambda m: m.materialization.at)
        with store.write() as conn:
            Store.claim_events(conn, [m.event_id for m in facts.materializations])
            health_db.write_facts(conn, facts, time.time())
            health_db.mark_dirty(conn, {m.key: None for m in facts.materializations}, time.time())
        count += len(facts.materializations)
        day += DAY
    out["history_events"] = count
    out["history_s"] = round(time.perf_counter() - started, 1)

    # Every asset judged once on the wall clock, as the worker's first periodic pass after a start.
    started = time.perf_counter()
    service = HealthService(store, settings)
    service.evaluate_all()
    with store.write() as conn:
        health_db.clear_dirty(conn)
        conn.execute("DELETE FROM event_outbox")  # published by a worker; nobody reads them here
    store.checkpoint()
    store.close()
    out["evaluate_s"] = round(time.perf_counter() - started, 1)
    out["health_db_mb"] = round((directory / "health.db").stat().st_size / 2**20, 1)
    out["metadata_db_mb"] = round((directory / "metadata.db").stat().st_size / 2**20, 1)
    return out


def time_cli(directory: Path, assets: int, repeat: int) -> dict[str, object]:
    """The CLI's commands of `bench/scale.py` against the stores in `directory`, as ratios to its start-up."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMS_")},
        "DAGSTER_HOME": str(directory),
        "ENVIRONMENT": "production",
        "AMS_LOGGING__FILE": str(directory / "system.log"),
        "AMS_LOGGING__LEVEL": "WARNING",
    }
    cli = str(Path(sys.executable).with_name("asset-manager"))
    one = catalog(assets)[assets // 2].key
    startup = cli_time([cli, "--help"], env, repeat)
    timings = {
        "asset_health_one": cli_time([cli, "asset-health", one], env, repeat),
        "asset_health_failed": cli_time([cli, "asset-health", "--status", "FAILED"], env, repeat),
        "list_assets_json": cli_time([cli, "list-assets", "--format", "json"], env, repeat),
    }
    return {
        "cli_startup_s": round(startup, 3),
        "cli_s": {k: round(v, 3) for k, v in timings.items()},
        "cli_ratio": {k: round(v / startup, 2) for k, v in timings.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, required=True, help="a new or empty directory for the stores")
    parser.add_argument("--assets", type=int, default=50_000)
    parser.add_argument("--days", type=float, default=90)
    parser.add_argument("--hourly-pct", type=float, default=1.0)
    parser.add_argument("--six-hourly-pct", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="the stores in --dir are already built (same --assets): time only",
    )
    parser.add_argument("--cli-repeat", type=int, default=0, help="time the CLI (0: do not)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    directory = args.dir.resolve()
    built = any(directory.glob("*.db"))
    if args.reuse and not built:
        parser.error(f"--reuse: {directory} holds no stores")
    if built and not args.reuse:
        parser.error(f"{directory} already holds stores (--reuse to time the CLI against them)")
    result: dict[str, object] = {"dir": str(directory), "assets": args.assets}
    if not args.reuse:
        result = build(directory, args.assets, args.days, args.hourly_pct, args.six_hourly_pct, args.seed)
    if args.cli_repeat:
        result.update(time_cli(directory, args.assets, args.cli_repeat))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
