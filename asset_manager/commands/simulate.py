"""`asset-manager simulate`: publish realistic run and materialization streams for demos, tests and
benchmarks.

Each simulated asset runs about hourly with its own normal row count, duration and column schema. After a
stretch of normal history, anomalies are injected at random (seeded): failed runs, volume drops and spikes,
slow runs, late runs (a gap before the next one) and schema changes. Event ids derive from the seed and the
run, so publishing the same simulation twice is recognised downstream as the same events.

Use it as a library too: `simulate(bus, assets=..., events=..., rate=..., seed=...)`.

The events go to the real `runs` and `assets` streams, so the running workers treat them as real runs: that
is what a demo or a load test wants to see. They stay removable: `asset-manager simulate --clean` (workers
stopped and caught up) deletes every trace of the assets under the prefix from health.db and monitor.db, the
processed-event ids (so the same simulation can be published again), and the entries of the streams.
It refuses, before changing anything, when an asset under the prefix shows a sign of being real: a catalog
entry in metadata.db, a spec copy in health.db, a run not made by simulate.
"""

from __future__ import annotations

import functools
import heapq
import math
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from asset_manager.errors import CliError
from libs.common.bus import Bus
from libs.common.events import (
    ASSETS,
    HEALTH,
    RUNS,
    AssetMaterializationFailed,
    AssetMaterialized,
    Column,
    Event,
    MaterializationData,
    MaterializationFailedData,
    RunData,
    RunEvent,
    event_id,
    new_event,
)
from libs.common.settings import StoreName

if TYPE_CHECKING:
    from asset_manager.settings import AppSettings
    from libs.common.store import Store

INJECTIONS = ("failure", "volume", "duration", "late", "schema")
GROUPS = ("sales", "finance", "marketing", "operations", "hr")
SOURCE = "asset-manager-simulate"
RUN_ID_PREFIX = "sim-"  # every simulated run id starts so (`generate`): how --clean tells them from real runs
_TYPES = ("int64", "float64", "string", "timestamp", "bool")


@dataclass
class _Asset:
    key: str
    group: str
    rows: float  # median row count
    duration_s: float  # median duration
    columns: list[Column]
    interval_s: float
    runs: int = 0


@dataclass
class SimulationSummary:
    """What a simulation published."""

    events: int = 0
    runs: int = 0
    failures: int = 0
    assets: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _assets(count: int, rng: random.Random, prefix: str) -> list[_Asset]:
    assets = []
    for i in range(count):
        group = GROUPS[i % len(GROUPS)]
        width = rng.randint(3, 8)
        columns = [Column(name="id", type="int64")] + [
            Column(name=f"col_{j}", type=rng.choice(_TYPES)) for j in range(1, width)
        ]
        assets.append(
            _Asset(
                key=f"{prefix}/{group}/asset_{i:04d}",
                group=group,
                rows=float(int(math.exp(rng.uniform(math.log(100), math.log(1_000_000))))),
                duration_s=rng.uniform(2, 300),
                columns=columns,
                interval_s=3600.0,
            )
        )
    return assets


def generate(
    *,
    assets: int = 20,
    events: int = 1000,
    seed: int = 0,
    inject: Sequence[str] = INJECTIONS,
    inject_rate: float = 0.05,
    history: float = 0.6,
    prefix: str = "sim",
    now: datetime | None = None,
    summary: SimulationSummary | None = None,
) -> Iterator[tuple[str, Event]]:
    """Yield (stream, event) in time order until `events` events: normal history for the first `history`
    fraction, then anomalies from `inject` on about `inject_rate` of the runs."""
    unknown = sorted(set(inject) - set(INJECTIONS))
    if unknown:
        raise ValueError(f"unknown injection {', '.join(unknown)} (known: {', '.join(INJECTIONS)})")
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    summary = summary if summary is not None else SimulationSummary()
    pool = _assets(max(1, assets), rng, prefix)
    summary.assets = len(pool)
    runs_per_asset = max(1, math.ceil(events / 3 / len(pool)))
    start = now - timedelta(hours=runs_per_asset + 1)
    queue = [(start + timedelta(seconds=rng.uniform(0, 3600)), i) for i in range(len(pool))]
    heapq.heapify(queue)
    produced = 0
    warmup = int(events * history)
    while produced < events:
        at, index = heapq.heappop(queue)
        asset = pool[index]
        asset.runs += 1
        at = min(at, now)
        injection = (
            rng.choice(list(inject)) if inject and produced >= warmup and rng.random() < inject_rate else None
        )
        if injection:
            summary.injected[injection] = summary.injected.get(injection, 0) + 1
        run_id = f"{RUN_ID_PREFIX}{seed}-{index}-{asset.runs}"
        rows = max(0, int(rng.gauss(asset.rows, asset.rows * 0.05)))
        duration = max(0.1, rng.gauss(asset.duration_s, asset.duration_s * 0.1))
        if injection == "volume":
            rows = int(rows * rng.choice([0.02, 0.1, 8.0]))
        elif injection == "duration":
            duration *= rng.uniform(6, 15)
        elif injection == "schema":
            changed = list(asset.columns[:-1]) if len(asset.columns) > 2 else list(asset.columns)
            changed.append(Column(name=f"new_col_{asset.runs}", type=rng.choice(_TYPES)))
            asset.columns = changed  # a schema change persists
        # Every time stays in the past: consumers dead-letter events dated beyond their clock (plus skew).
        at = min(at, now - timedelta(seconds=duration))
        ended = at + timedelta(seconds=duration)
        failed = injection == "failure"
        base = {
            "run_id": run_id,
            "job_name": f"{asset.key.replace('/', '__')}_job",
            "asset_keys": [asset.key],
        }
        batch: list[tuple[str, Event]] = [
            (
                RUNS,
                new_event(
                    RunEvent,
                    "run.started",
                    identity=f"{run_id}:STARTED",
                    source=SOURCE,
                    occurred_at=at,
                    data=RunData(status="STARTED", started_at=at, **base),
                ),
            ),
        ]
        if failed:
            error = rng.choice(
                [
                    "ConnectionError: source database unreachable",
                    "KeyError: 'customer_id'",
                    "TimeoutError: query exceeded 600 s",
                    "ValueError: could not convert 'n/a' to float",
                ]
            )
            batch.append(
                (
                    ASSETS,
                    new_event(
                        AssetMaterializationFailed,
                        "asset.materialization_failed",
                        identity=f"{run_id}:{asset.key}:failed",
                        source=SOURCE,
                        occurred_at=ended,
                        data=MaterializationFailedData(asset_key=asset.key, run_id=run_id, error=error),
                    ),
                )
            )
            batch.append(
                (
                    RUNS,
                    new_event(
                        RunEvent,
                        "run.failed",
                        identity=f"{run_id}:FAILURE",
                        source=SOURCE,
                        occurred_at=ended,
                        data=RunData(
                            status="FAILURE",
                            started_at=at,
                            ended_at=ended,
                            duration_s=duration,
                            error=error,
                            **base,
                        ),
                    ),
                )
            )
            summary.failures += 1
        else:
            batch.append(
                (
                    ASSETS,
                    new_event(
                        AssetMaterialized,
                        "asset.materialized",
                        identity=f"{run_id}:{asset.key}",
                        source=SOURCE,
                        occurred_at=ended,
                        data=MaterializationData(
                            asset_key=asset.key,
                            run_id=run_id,
                            row_count=rows,
                            column_schema=list(asset.columns),
                            duration_s=round(duration, 3),
                            metadata={"dagster/row_count": rows, "simulated": True},
                        ),
                    ),
                )
            )
            batch.append(
                (
                    RUNS,
                    new_event(
                        RunEvent,
                        "run.succeeded",
                        identity=f"{run_id}:SUCCESS",
                        source=SOURCE,
                        occurred_at=ended,
                        data=RunData(
                            status="SUCCESS", started_at=at, ended_at=ended, duration_s=duration, **base
                        ),
                    ),
                )
            )
        summary.runs += 1
        for item in batch[: events - produced]:
            produced += 1
            yield item
        gap = asset.interval_s * rng.uniform(0.95, 1.05)
        if injection == "late":
            gap *= rng.uniform(3, 6)
        heapq.heappush(queue, (at + timedelta(seconds=gap), index))


def simulate(
    bus: Bus,
    *,
    assets: int = 20,
    events: int = 1000,
    rate: float | None = None,
    seed: int = 0,
    inject: Sequence[str] = INJECTIONS,
    inject_rate: float = 0.05,
    prefix: str = "sim",
    progress: Callable[[int], None] | None = None,
    batch_size: int = 500,
) -> SimulationSummary:
    """Publish a simulation to the bus (paced to `rate` events/s when given); returns what was sent."""
    summary = SimulationSummary()
    started = time.monotonic()
    chunk = batch_size if not rate else max(1, min(batch_size, int(rate / 50) or 1))
    pending: dict[str, list[Event]] = {}
    count = 0

    def flush() -> None:
        nonlocal count
        for stream, items in pending.items():
            bus.publish_many(stream, items)
            count += len(items)
            if progress is not None:
                progress(len(items))
        pending.clear()

    buffered = 0
    for stream, event in generate(
        assets=assets,
        events=events,
        seed=seed,
        inject=inject,
        inject_rate=inject_rate,
        prefix=prefix,
        summary=summary,
    ):
        pending.setdefault(stream, []).append(event)
        buffered += 1
        if buffered >= chunk:
            flush()
            buffered = 0
            if rate:
                ahead = count / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    flush()
    summary.events = count
    summary.seconds = time.monotonic() - started
    return summary


# -- removal: `asset-manager simulate --clean` ------------------------------------------------------------


def simulated_event_ids(runs: Iterable[tuple[str, str]]) -> list[str]:
    """The ids of every event `generate` may have published for these (asset key, run id) pairs."""
    ids: list[str] = []
    for key, run_id in runs:
        ids += [
            event_id("run.started", f"{run_id}:STARTED"),
            event_id("run.succeeded", f"{run_id}:SUCCESS"),
            event_id("run.failed", f"{run_id}:FAILURE"),
            event_id("asset.materialized", f"{run_id}:{key}"),
            event_id("asset.materialization_failed", f"{run_id}:{key}:failed"),
        ]
    return ids


@dataclass
class CleanPlan:
    """What `--clean` will remove, found and checked before anything is changed."""

    prefix: str  # the key prefix, with its trailing "/"
    keys: list[str] = field(default_factory=list)  # simulated asset keys found in health.db
    runs: list[tuple[str, str]] = field(default_factory=list)  # their (asset key, run id)
    entries: dict[str, list[str]] = field(default_factory=dict)  # stream name -> entry ids to delete

    @property
    def empty(self) -> bool:
        return not self.keys and not any(self.entries.values())


def _entry_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


def _unsettled_groups(bus: Bus, streams: Sequence[str]) -> list[str]:
    """Consumer groups of `streams` with entries not yet delivered or not yet acknowledged."""
    import redis

    behind: list[str] = []
    for stream in streams:
        key = bus.key(stream)
        try:
            last = _entry_id(bus.client.xinfo_stream(key)["last-generated-id"])
        except redis.ResponseError:  # no such stream
            continue
        for group in bus.client.xinfo_groups(key):
            name = group["name"].decode() if isinstance(group["name"], bytes) else str(group["name"])
            unread = _entry_id(group["last-delivered-id"]) < last
            if group["pending"] or unread:
                behind.append(
                    f"{name} on {key} ({group['pending']} pending{', unread entries' if unread else ''})"
                )
    return behind


def _scan_stream(bus: Bus, stream: str, prefix: str, *, simulated_only: bool) -> tuple[list[str], list[str]]:
    """(entry ids about keys under `prefix` that simulate published — any source when not
    `simulated_only` —, descriptions of entries under `prefix` from another source)."""
    import json

    ids: list[str] = []
    foreign: list[str] = []
    key = bus.key(stream)
    start = "-"
    while True:
        # redis-py types a reply as a union of every RESP shape; RESP2 gives [(id, fields)]
        page: Any = bus.client.xrange(key, min=start, max="+", count=1000)
        for raw_id, fields in page:
            try:
                event = json.loads(fields[b"event"])
                data = event["data"]
                keys = list(data.get("asset_keys") or []) + (
                    [data["asset_key"]] if data.get("asset_key") else []
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # not an event of ours: the consumers dead-letter it
            under = [k for k in keys if isinstance(k, str) and k.startswith(prefix)]
            if not under:
                continue
            entry = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if not simulated_only or (event.get("source") == SOURCE and len(under) == len(keys)):
                ids.append(entry)
            else:
                foreign.append(f"{under[0]} in {key} {entry} (source {event.get('source')!r})")
        if len(page) < 1000:
            return ids, foreign
        ms, seq = _entry_id(page[-1][0])
        start = f"{ms}-{seq + 1}"


def _existing_store(settings: AppSettings, name: StoreName) -> Store | None:
    """The service store `name` opened by its own module, or None when it was never created (SQLite)."""
    from asset_manager.stores import open_service_store, store_file
    from libs.common.store import is_postgres

    if not is_postgres(settings.store_url(name)) and not store_file(settings, name).exists():
        return None
    return open_service_store(settings, name)


def plan_clean(settings: AppSettings, bus: Bus, prefix: str) -> CleanPlan:
    """Everything `--clean` would remove under `prefix`; CliError (exit 1) when removing it now would be
    unsafe (workers running or behind) or would touch an asset that looks real."""
    from asset_manager.commands.admin import locked_by_writer, running_workers
    from asset_manager.stores import store_file
    from libs.common.settings import ServiceName
    from libs.common.store import is_postgres
    from services.discovery import queries as catalog
    from services.health import store as health_store

    plan = CleanPlan(prefix=prefix.strip("/") + "/")
    # A worker removed from under would write back what it holds in memory (the health worker's cache).
    running = running_workers(settings)
    leased = [str(s) for s in ServiceName if bus.client.exists(bus.key(f"lease:{s}"))]
    if running or leased:
        held = running + [
            f"{s} (holds its lease in Redis; stopped less than 30 s ago, or running elsewhere)"
            for s in leased
            if not any(r.startswith(s) for r in running)
        ]
        raise CliError(f"refusing to clean while workers run: {', '.join(held)}; stop them first", code=1)
    busy = [
        reason
        for name in StoreName
        if not is_postgres(settings.store_url(name))
        and (reason := locked_by_writer(store_file(settings, name)))
    ]
    if busy:
        raise CliError(f"refusing to clean: {'; '.join(busy)}", code=1)
    # Entries not yet handled would bring simulated assets back after the clean.
    behind = _unsettled_groups(bus, (RUNS, ASSETS, HEALTH))
    if behind:
        raise CliError(
            f"refusing to clean while workers have not caught up: {'; '.join(behind)}; start them "
            "until they have, stop them, then clean",
            code=1,
        )
    looks_real: list[str] = []
    metadata = _existing_store(settings, StoreName.METADATA)
    if metadata is not None:
        with metadata.read() as conn:
            looks_real += [
                f"{k} is in the catalog (metadata.db)"
                for k in catalog.all_keys(conn)
                if k.startswith(plan.prefix)
            ]
        metadata.close()
    health = _existing_store(settings, StoreName.HEALTH)
    if health is not None:
        with health.read() as conn:
            plan.keys = health_store.keys_under(conn, plan.prefix)
            plan.runs = health_store.runs_of(conn, plan.keys)
            looks_real += [
                f"{k} has an asset spec (health.db)" for k in health_store.keys_with_spec(conn, plan.keys)
            ]
        health.close()
        looks_real += [
            f"{k} has run {r!r}, not a simulated one" for k, r in plan.runs if not r.startswith(RUN_ID_PREFIX)
        ]
    for stream in (RUNS, ASSETS, HEALTH):
        ids, foreign = _scan_stream(bus, stream, plan.prefix, simulated_only=stream != HEALTH)
        plan.entries[stream] = ids
        looks_real += foreign
    if looks_real:
        more = f" (and {len(looks_real) - 3} more)" if len(looks_real) > 3 else ""
        raise CliError(
            f"refusing to clean {plan.prefix}: not only simulated assets there: "
            f"{'; '.join(looks_real[:3])}{more}",
            code=1,
        )
    return plan


def apply_clean(settings: AppSettings, bus: Bus, plan: CleanPlan) -> dict[str, dict[str, int]]:
    """Remove what `plan` found: health.db, monitor.db, then the stream entries; rows removed per place."""
    from libs.common.store import Store
    from services.alerts import purge
    from services.health import store as health_store

    removed: dict[str, dict[str, int]] = {}
    health = _existing_store(settings, StoreName.HEALTH)
    if health is not None and plan.keys:
        with health.write() as conn:
            removed["health.db"] = health_store.delete_assets(conn, plan.keys)
            removed["health.db"]["processed_events"] = Store.forget_events(
                conn, simulated_event_ids(plan.runs)
            )
        health.close()
    monitor = _existing_store(settings, StoreName.MONITOR)
    if monitor is not None and plan.keys:
        with monitor.write() as conn:
            removed["monitor.db"] = purge.delete_assets(conn, plan.keys)
        monitor.close()
    removed["redis"] = {}
    for stream, ids in plan.entries.items():
        for start in range(0, len(ids), 1000):
            bus.client.xdel(bus.key(stream), *ids[start : start + 1000])
        removed["redis"][bus.key(stream)] = len(ids)
    return removed


def clean(settings: AppSettings, bus: Bus, prefix: str) -> tuple[CleanPlan, dict[str, dict[str, int]]]:
    """Check, then remove every trace of the simulated assets under `prefix`."""
    plan = plan_clean(settings, bus, prefix)
    return plan, ({} if plan.empty else apply_clean(settings, bus, plan))


def _clean_report(plan: CleanPlan, removed: dict[str, dict[str, int]]) -> str:
    if plan.empty:
        return (
            f"nothing to remove: no simulated asset under {plan.prefix} "
            "in health.db, monitor.db or the streams"
        )
    lines = [
        f"removed every trace of {len(plan.keys)} simulated assets under {plan.prefix}:"
        if plan.keys
        else f"removed the stream entries of simulated assets under {plan.prefix} (no store held them):"
    ]
    for place in ("health.db", "monitor.db", "redis"):
        counts = ", ".join(f"{name} {n}" for name, n in removed.get(place, {}).items() if n) or "nothing"
        lines.append(f"  {place:<11} {counts}")
    lines.append(
        "  metadata.db nothing (simulate publishes no asset specs; no catalog asset is under the prefix)"
    )
    return "\n".join(lines)


def _parse_inject(values: Sequence[str]) -> list[str]:
    chosen: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part == "none":
                return []
            if part == "all":
                chosen.extend(INJECTIONS)
            elif part in INJECTIONS:
                chosen.append(part)
            else:
                raise CliError(f"unknown --inject {part!r}: choose from {', '.join(INJECTIONS)}, all or none")
    return list(dict.fromkeys(chosen))


def simulate_command(
    assets: Annotated[
        int, typer.Option("--assets", min=1, max=100_000, help="How many simulated assets")
    ] = 20,
    events: Annotated[
        int, typer.Option("--events", min=1, max=100_000_000, help="How many events to publish")
    ] = 1000,
    rate: Annotated[
        float, typer.Option("--rate", min=0, help="Events per second (0: as fast as possible)")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed: same events, same ids)")] = 0,
    inject: Annotated[
        list[str] | None,
        typer.Option(
            "--inject",
            help=f"Anomalies to inject: {', '.join(INJECTIONS)}, all or none (repeatable or comma-separated)",
        ),
    ] = None,
    inject_rate: Annotated[
        float, typer.Option("--inject-rate", min=0, max=1, help="Share of runs with an anomaly")
    ] = 0.05,
    prefix: Annotated[str, typer.Option("--prefix", help="Asset key prefix of the simulated assets")] = "sim",
    clean_: Annotated[
        bool,
        typer.Option(
            "--clean",
            help="Publish nothing: remove every trace of the simulated assets under --prefix from the "
            "stores and streams (workers stopped)",
        ),
    ] = False,
) -> None:
    """Publish realistic run and materialization events (normal history, then injected anomalies) to the real
    streams, where the workers record them like real runs; `--clean` removes them again."""
    from asset_manager.settings import load_app_settings
    from libs.common.bus import connect
    from libs.common.log import configure_logging

    kinds = _parse_inject(inject or ["all"])
    if clean_ and not prefix.strip("/"):
        raise CliError("--clean needs a non-empty --prefix (it would match every asset)")
    settings = load_app_settings()
    quiet = settings.logging.model_copy(update={"level": "WARNING", "file": None})
    configure_logging(settings.model_copy(update={"logging": quiet}), stream=sys.stderr)
    client = connect(settings.redis)
    bus = Bus(client, settings.bus)
    try:
        client.ping()
    except Exception as exc:
        client.close()
        raise CliError(f"cannot reach Redis at {settings.redis.url}: {exc}", code=1) from None
    if clean_:
        try:
            typer.echo(_clean_report(*clean(settings, bus, prefix)))
        finally:
            client.close()
        return
    run = functools.partial(
        simulate,
        bus,
        assets=assets,
        events=events,
        rate=rate or None,
        seed=seed,
        inject=kinds,
        inject_rate=inject_rate,
        prefix=prefix,
    )
    try:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(
                TextColumn("simulating"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            ) as bar:
                task = bar.add_task("events", total=events)
                summary = run(progress=lambda n: bar.advance(task, n))
        else:
            summary = run()
    finally:
        client.close()
    injected = ", ".join(f"{k} {v}" for k, v in sorted(summary.injected.items())) or "none"
    typer.echo(
        f"published {summary.events} events ({summary.runs} runs, {summary.failures} failed) "
        f"for {summary.assets} assets to {settings.bus.prefix}:{RUNS} and {settings.bus.prefix}:{ASSETS} "
        f"in {summary.seconds:.2f} s ({summary.events_per_s:,.0f}/s); injected: {injected}\n"
        f"these are the real streams: the workers record the assets under {prefix.strip('/')}/ "
        "in health.db and monitor.db like real ones, and notify the receivers; "
        "to remove every trace, stop the workers once they have caught up and run: "
        f"asset-manager simulate --clean --prefix {shlex.quote(prefix)}"
    )


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
