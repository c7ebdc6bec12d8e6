"""`asset-manager simulate`: publish realistic run and materialization streams for demos, tests and benchmarks.

Each simulated asset runs about hourly with its own normal row count, duration and column schema. After a
stretch of normal history, anomalies are injected at random (seeded): failed runs, volume drops and spikes,
slow runs, late runs (a gap before the next one) and schema changes. Event ids derive from the seed and the
run, so publishing the same simulation twice is recognised downstream as the same events.

Use it as a library too: `simulate(bus, assets=..., events=..., rate=..., seed=...)`.
"""

from __future__ import annotations

import heapq
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from asset_manager.errors import CliError
from libs.common.bus import Bus
from libs.common.events import (
    ASSETS,
    RUNS,
    AssetMaterializationFailed,
    AssetMaterialized,
    Column,
    Event,
    MaterializationData,
    MaterializationFailedData,
    RunData,
    RunEvent,
    new_event,
)

INJECTIONS = ("failure", "volume", "duration", "late", "schema")
GROUPS = ("sales", "finance", "marketing", "operations", "hr")
SOURCE = "asset-manager-simulate"
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
        injection = rng.choice(list(inject)) if inject and produced >= warmup and rng.random() < inject_rate else None
        if injection:
            summary.injected[injection] = summary.injected.get(injection, 0) + 1
        run_id = f"sim-{seed}-{index}-{asset.runs}"
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
        base = {"run_id": run_id, "job_name": f"{asset.key.replace('/', '__')}_job", "asset_keys": [asset.key]}
        batch: list[tuple[str, Event]] = [
            (RUNS, new_event(RunEvent, "run.started", identity=f"{run_id}:STARTED", source=SOURCE, occurred_at=at,
                             data=RunData(status="STARTED", started_at=at, **base))),
        ]
        if failed:
            error = rng.choice(["ConnectionError: source database unreachable", "KeyError: 'customer_id'",
                                "TimeoutError: query exceeded 600 s", "ValueError: could not convert 'n/a' to float"])
            batch.append((ASSETS, new_event(
                AssetMaterializationFailed, "asset.materialization_failed", identity=f"{run_id}:{asset.key}:failed",
                source=SOURCE, occurred_at=ended,
                data=MaterializationFailedData(asset_key=asset.key, run_id=run_id, error=error))))
            batch.append((RUNS, new_event(RunEvent, "run.failed", identity=f"{run_id}:FAILURE", source=SOURCE,
                                          occurred_at=ended,
                                          data=RunData(status="FAILURE", started_at=at, ended_at=ended,
                                                       duration_s=duration, error=error, **base))))
            summary.failures += 1
        else:
            batch.append((ASSETS, new_event(
                AssetMaterialized, "asset.materialized", identity=f"{run_id}:{asset.key}", source=SOURCE,
                occurred_at=ended,
                data=MaterializationData(asset_key=asset.key, run_id=run_id, row_count=rows,
                                         column_schema=list(asset.columns), duration_s=round(duration, 3),
                                         metadata={"dagster/row_count": rows, "simulated": True}))))
            batch.append((RUNS, new_event(RunEvent, "run.succeeded", identity=f"{run_id}:SUCCESS", source=SOURCE,
                                          occurred_at=ended,
                                          data=RunData(status="SUCCESS", started_at=at, ended_at=ended,
                                                       duration_s=duration, **base))))
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
    for stream, event in generate(assets=assets, events=events, seed=seed, inject=inject, inject_rate=inject_rate,
                                  prefix=prefix, summary=summary):
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
    assets: Annotated[int, typer.Option("--assets", min=1, max=100_000, help="How many simulated assets")] = 20,
    events: Annotated[int, typer.Option("--events", min=1, max=100_000_000, help="How many events to publish")] = 1000,
    rate: Annotated[float, typer.Option("--rate", min=0, help="Events per second (0: as fast as possible)")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed: same events, same ids)")] = 0,
    inject: Annotated[
        list[str] | None,
        typer.Option("--inject", help=f"Anomalies to inject: {', '.join(INJECTIONS)}, all or none (repeatable or comma-separated)"),
    ] = None,
    inject_rate: Annotated[float, typer.Option("--inject-rate", min=0, max=1, help="Share of runs with an anomaly")] = 0.05,
    prefix: Annotated[str, typer.Option("--prefix", help="Asset key prefix of the simulated assets")] = "sim",
) -> None:
    """Publish realistic run and materialization events (normal history, then injected anomalies) to Redis."""
    from asset_manager.settings import load_app_settings
    from libs.common.bus import connect
    from libs.common.log import configure_logging

    kinds = _parse_inject(inject or ["all"])
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
    try:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("events", total=events)
                summary = simulate(bus, assets=assets, events=events, rate=rate or None, seed=seed, inject=kinds,
                                   inject_rate=inject_rate, prefix=prefix,
                                   progress=lambda n: bar.advance(task, n))
        else:
            summary = simulate(bus, assets=assets, events=events, rate=rate or None, seed=seed, inject=kinds,
                               inject_rate=inject_rate, prefix=prefix)
    finally:
        client.close()
    injected = ", ".join(f"{k} {v}" for k, v in sorted(summary.injected.items())) or "none"
    typer.echo(
        f"published {summary.events} events ({summary.runs} runs, {summary.failures} failed) for {summary.assets} "
        f"assets to {settings.bus.prefix}:{RUNS} and {settings.bus.prefix}:{ASSETS} in {summary.seconds:.2f} s "
        f"({summary.events_per_s:,.0f}/s); injected: {injected}"
    )


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
