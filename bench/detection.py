"""Detection quality of the health evaluators on generated, labelled series.

Each evaluator sees realistic histories (trend, weekly seasonality, multiplicative noise, late and missing
runs, schema changes, failing upstreams) with injected anomalies of known size, evaluated point by point
the way the service does. Printed per evaluator: recall (injected anomalies found), false_positive_rate
(findings on clean series, with nothing injected), precision (over every evaluated point). Targets:
recall >= 0.95 for anomalies >= 5 sigma, false-positive rate <= 1 % on clean series.

    python bench/detection.py [--seed N] [--series N]

The last line is one JSON object: evaluator -> {recall, false_positive_rate, precision, ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.events import AssetSpecData
from services.health.anomaly import bucket_of
from services.health.evaluators import (
    dependencies,
    duration_anomaly,
    execution_status,
    freshness,
    schema_drift,
    volume_anomaly,
)
from services.health.model import AssetHistory, Execution, Materialization, UpstreamState
from services.health.settings import HealthThresholds
from services.health.thresholds import Resolved

DAY = 86400.0
T0 = 1_760_000_000.0 - (1_760_000_000.0 % DAY)
FIRST_EVAL = 70  # days of history before the first evaluated point (the weekday profile needs 8 weeks)
DAYS = 130


@dataclass
class Tally:
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0
    clean_fp: int = 0
    clean_n: int = 0
    missed: list[str] = field(default_factory=list)

    def add(self, truth: bool, found: bool, *, clean: bool, note: str = "") -> None:
        if truth:
            self.tp += found
            self.fn += not found
            if not found and len(self.missed) < 5:
                self.missed.append(note)
        else:
            self.fp += found
            self.tn += not found
        if clean:
            self.clean_n += 1
            self.clean_fp += found

    def summary(self) -> dict[str, float | int]:
        positives = self.tp + self.fn
        return {
            "recall": round(self.tp / positives, 4) if positives else 1.0,
            "false_positive_rate": round(self.clean_fp / self.clean_n, 4) if self.clean_n else 0.0,
            "precision": round(self.tp / (self.tp + self.fp), 4) if self.tp + self.fp else 1.0,
            "positives": positives,
            "clean_points": self.clean_n,
        }


def found(outcome: str) -> bool:
    return outcome != "passed"


# -- volume ---------------------------------------------------------------------------------------------


def volume_bench(rng: random.Random, n_series: int) -> Tally:
    th = HealthThresholds()  # the defaults: weekly profile detected automatically
    tally = Tally()
    for s in range(n_series):
        level = 10 ** rng.uniform(3, 7)
        trend = rng.uniform(-0.004, 0.006)
        weekend = rng.choice([1.0, rng.uniform(0.4, 0.9)])
        noise = rng.uniform(0.02, 0.10)
        anomalous = s % 2 == 1
        mats: list[Materialization] = []
        injected: dict[int, str] = {}
        if anomalous:
            for day in rng.sample(range(20, DAYS), 12):
                injected[day] = rng.choice(
                    ["spike", "drop", "zero"] if rng.random() < 0.15 else ["spike", "drop"]
                )
        for day in range(DAYS):
            t = T0 + day * DAY + 2 * 3600 + rng.uniform(-600, 600)  # a daily run at about 02:00 UTC
            base = level * (1 + trend * day) * (weekend if bucket_of(t, "day_of_week") >= 5 else 1.0)
            kind = injected.get(day)
            if kind == "zero":
                value = 0
            elif kind is not None:
                k = rng.uniform(5, 8) * noise
                value = round(base * (1 + k if kind == "spike" else 1 - k))
            else:
                value = round(base * (1 + rng.gauss(0, noise)))
            mats.append(Materialization(t, f"r{day}", max(0, value)))
            if day >= FIRST_EVAL:
                result = volume_anomaly(AssetHistory("a", materializations=mats), th)
                tally.add(
                    kind is not None,
                    found(result.outcome),
                    clean=not anomalous,
                    note=f"{kind} noise={noise:.2f} {result.reason}",
                )
    return tally


# -- duration -------------------------------------------------------------------------------------------


def duration_bench(rng: random.Random, n_series: int) -> Tally:
    th = HealthThresholds()
    tally = Tally()
    for s in range(n_series):
        base = 10 ** rng.uniform(1.5, 3.5)
        sigma = rng.uniform(0.03, 0.15)
        anomalous = s % 2 == 1
        spikes = set(rng.sample(range(10, DAYS), 12)) if anomalous else set()
        mats: list[Materialization] = []
        for day in range(DAYS):
            t = T0 + day * DAY
            z = rng.uniform(5, 8) if day in spikes else rng.gauss(0, 1)
            d = base * math.exp(z * sigma)
            mats.append(Materialization(t, f"r{day}", 1, duration_s=d))
            if day >= 40:
                result = duration_anomaly(AssetHistory("a", materializations=mats), th, t + 60)
                tally.add(day in spikes, found(result.outcome), clean=not anomalous, note=result.reason)
    return tally


# -- freshness ------------------------------------------------------------------------------------------


def freshness_bench(rng: random.Random, n_series: int) -> Tally:
    tally = Tally()
    resolved = Resolved(HealthThresholds())
    for s in range(n_series):
        cadence = rng.choice([3600.0, 6 * 3600.0, DAY])
        anomalous = s % 2 == 1
        times: list[float] = []
        t = T0
        for i in range(60):
            t = T0 + i * cadence + rng.uniform(-0.1, 0.1) * cadence
            if anomalous and i > 15 and rng.random() < 0.12:
                if rng.random() < 0.5:
                    continue  # a missing run
                t += rng.uniform(1.5, 3.0) * cadence  # a late run
            times.append(t)
        times.sort()
        end = times[-1] + 3 * cadence if anomalous else times[-1]
        mats = [Materialization(x, f"r{i}", 1) for i, x in enumerate(times)]
        now = times[10]
        idx = 0
        while now < end:
            while idx + 1 < len(mats) and mats[idx + 1].at <= now:
                idx += 1
            age = now - mats[idx].at
            if idx >= 8:
                truth = age > 2 * cadence  # clearly late: a whole run is missing
                if truth or age <= 1.3 * cadence:  # in between is neither clearly fine nor clearly late
                    result = freshness(AssetHistory("a", materializations=mats[: idx + 1]), resolved, now)
                    tally.add(truth, found(result.outcome), clean=not anomalous, note=result.reason)
            now += cadence / 4
    return tally


# -- execution status -----------------------------------------------------------------------------------


def execution_bench(rng: random.Random, n_series: int) -> Tally:
    th = HealthThresholds()
    tally = Tally()
    for s in range(n_series):
        anomalous = s % 2 == 1
        runs: list[Execution] = []
        mats: list[Materialization] = []
        for i in range(40):
            t = T0 + i * 3600
            failed = anomalous and rng.random() < 0.2
            status = (
                "FAILURE" if failed else rng.choice(["SUCCESS"] * 20 + ["CANCELED"] * (1 if anomalous else 0))
            )
            runs.append(Execution(f"r{i}", status, t, t + 30, 30.0, "boom" if failed else None))  # type: ignore[arg-type]
            if status == "SUCCESS":
                mats.append(Materialization(t + 30, f"r{i}", 1))
            result = execution_status(
                AssetHistory("a", materializations=list(mats), executions=list(runs)), th
            )
            tally.add(status != "SUCCESS", found(result.outcome), clean=not anomalous, note=result.reason)
    return tally


# -- schema drift ---------------------------------------------------------------------------------------

TYPES = {
    "integer": ["int64", "bigint", "INTEGER", "int"],
    "string": ["object", "varchar(50)", "TEXT", "str"],
    "float": ["float64", "double", "REAL"],
    "timestamp": ["datetime64[ns]", "TIMESTAMP", "datetime"],
}


def schema_bench(rng: random.Random, n_series: int) -> Tally:
    tally = Tally()
    for s in range(n_series):
        anomalous = s % 2 == 1
        cols = [(f"c{i}", rng.choice(TYPES[rng.choice(list(TYPES))])) for i in range(rng.randint(3, 12))]
        canon = {n: next(k for k, v in TYPES.items() if t in v) for n, t in cols}
        mats = [Materialization(T0, "r0", columns=tuple(cols))]
        for i in range(1, 30):
            change = rng.random() < 0.3
            truth = False
            if change:
                kind = rng.choice(
                    ["synonym", "synonym", "add", "remove", "retype"] if anomalous else ["synonym"]
                )
                idx = rng.randrange(len(cols))
                name, _ = cols[idx]
                if kind == "synonym":
                    cols[idx] = (name, rng.choice(TYPES[canon[name]]))
                elif kind == "add":
                    new = f"n{i}"
                    cols.append((new, "int64"))
                    canon[new] = "integer"
                    truth = True
                elif kind == "remove" and len(cols) > 1:
                    cols.pop(idx)
                    truth = True
                elif kind == "retype":
                    other = rng.choice([k for k in TYPES if k != canon[name]])
                    cols[idx] = (name, rng.choice(TYPES[other]))
                    canon[name] = other
                    truth = True
            mats.append(Materialization(T0 + i * DAY, f"r{i}", columns=tuple(cols)))
            result = schema_drift(
                AssetHistory("a", spec=AssetSpecData(key="a", downstream=["b"]), materializations=list(mats))
            )
            tally.add(truth, found(result.outcome), clean=not anomalous, note=result.reason)
    return tally


# -- dependencies ---------------------------------------------------------------------------------------


def dependency_bench(rng: random.Random, n_series: int) -> Tally:
    tally = Tally()
    for s in range(n_series * 10):
        anomalous = s % 2 == 1
        ups = [f"u{i}" for i in range(rng.randint(1, 4))]
        states: dict[str, UpstreamState] = {}
        truth = False
        for key in ups:
            problem = (
                rng.choice(["failed", "stale", "retired", "unregistered", None, None, None])
                if anomalous
                else None
            )
            truth = truth or problem is not None
            if problem == "unregistered":
                continue
            states[key] = UpstreamState(
                key,
                registered=True,
                retired=problem == "retired",
                execution_failed=problem == "failed",
                stale=problem == "stale",
            )
        result = dependencies(AssetHistory("a", spec=AssetSpecData(key="a", upstream=ups)), states)
        tally.add(truth, found(result.outcome), clean=not anomalous, note=result.reason)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--series", type=int, default=120, help="series per evaluator (half clean, half anomalous)"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, float | int]] = {}
    for name, bench in (
        ("volume_anomaly", volume_bench),
        ("duration_anomaly", duration_bench),
        ("freshness", freshness_bench),
        ("execution_status", execution_bench),
        ("schema_drift", schema_bench),
        ("dependencies", dependency_bench),
    ):
        started = time.perf_counter()
        tally = bench(random.Random(f"{args.seed}:{name}"), args.series)
        results[name] = {**tally.summary(), "seconds": round(time.perf_counter() - started, 2)}
        r = results[name]
        print(
            f"{name:18} recall {r['recall']:.3f}  fpr {r['false_positive_rate']:.4f}  "
            f"precision {r['precision']:.3f}"
            f"  ({r['positives']} anomalies, {r['clean_points']} clean points)",
            flush=True,
        )
        for note in tally.missed[:3]:
            print(f"    missed: {note[:160]}", flush=True)
    ok = all(r["recall"] >= 0.95 and r["false_positive_rate"] <= 0.01 for r in results.values())
    print(json.dumps({**results, "targets_met": ok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
