"""Robust anomaly detection on a time series (row counts, durations), in the spirit of Elementary.

The training set is the points of the training period before the point under test. The detector removes
a linear trend (Theil-Sen slope, used only when it explains the data better) and, optionally, a
day-of-week or hour-of-day profile (bucket medians), then scores the point by a robust z-score: its
distance from the expected value in units of the residuals' scaled median absolute deviation. Medians
make it robust to anomalies already in the history, so a past spike neither hides the next one nor
raises a false alarm later. Everything is scale invariant: multiplying the series by a constant leaves
every z-score unchanged.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

Direction = Literal["both", "spike", "drop"]
SeasonalityKind = Literal["none", "day_of_week", "hour_of_day", "auto"]

MAD_SCALE = 1.4826  # MAD of a normal distribution times this = its standard deviation
# The spread never falls below this fraction of the expected level: a constant series does not turn every
# sub-percent wiggle into an anomaly, and the floor scales with the series.
RELATIVE_SPREAD_FLOOR = 0.005
_MAX_SLOPE_POINTS = 24
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    sensitivity: float = 3.0
    direction: Direction = "both"
    training_s: float = 30 * _DAY
    min_training_size: int = 7
    seasonality: SeasonalityKind = "none"
    ignore_spike_pct: float = 0.0
    ignore_drop_pct: float = 0.0
    min_delta: float = 0.0
    max_points: int = 400


@dataclass(frozen=True, slots=True)
class Score:
    """The verdict on one point; `anomaly` is None when there is too little training data to judge."""

    value: float
    anomaly: Literal["spike", "drop"] | None
    enough_data: bool
    training_size: int
    expected: float | None = None
    spread: float | None = None
    z: float | None = None
    lower: float | None = None
    upper: float | None = None
    change_pct: float | None = None
    trend_per_day: float | None = None
    seasonal: bool = False
    note: str = ""
    seasonality: str = "none"
    fit_error: float | None = None


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def robust_location_scale(residuals: Sequence[float], cut: float = 3.5) -> tuple[float, float]:
    """Mean and standard deviation of the residuals after dropping past anomalies.

    Points further than `cut` scaled MADs from the median are excluded first (so outliers already in the
    history do not inflate the spread); the rest get the ordinary, efficient mean and standard deviation.
    When more than half the residuals are equal (MAD 0) the scaled mean absolute deviation is used.
    """
    center = median(residuals)
    deviations = [abs(r - center) for r in residuals]
    ordered = sorted(deviations)
    n = len(ordered)
    mid = n // 2
    mad = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0  # median(deviations)
    if mad == 0:
        return center, 1.2533 * sum(deviations) / len(deviations)
    limit = cut * MAD_SCALE * mad
    total = sum(deviations)
    if total == total and ordered[-1] <= limit:  # no NaN, so the last is the largest: none is cut
        kept: Sequence[float] = residuals
    else:
        kept = [r for r, d in zip(residuals, deviations, strict=True) if d <= limit]
    if len(kept) < 3:
        return center, MAD_SCALE * mad
    mean = sum(kept) / len(kept)
    var = sum([(r - mean) ** 2 for r in kept]) / (len(kept) - 1)
    return mean, math.sqrt(var)


def theil_sen_slope(ts: Sequence[float], vs: Sequence[float]) -> float:
    """Median of pairwise slopes over at most `_MAX_SLOPE_POINTS` evenly spaced points.

    The pairs are formed with numpy (the same divisions and the same median as in Python, five times
    faster: this ran twice for every row-count score)."""
    n = len(ts)
    if n > _MAX_SLOPE_POINTS:
        step = (n - 1) / (_MAX_SLOPE_POINTS - 1)
        idx = [round(i * step) for i in range(_MAX_SLOPE_POINTS)]
        ts = [ts[i] for i in idx]
        vs = [vs[i] for i in idx]
        n = len(ts)
    if n < 2:
        return 0.0
    first, second = _pairs(n)
    t = np.asarray(ts, dtype=np.float64)
    v = np.asarray(vs, dtype=np.float64)
    dt = t[second] - t[first]
    distinct = dt != 0
    slopes = (v[second] - v[first])[distinct] / dt[distinct]
    if not slopes.size:
        return 0.0
    slopes.sort()
    mid = slopes.size // 2
    return float(slopes[mid]) if slopes.size % 2 else float((slopes[mid - 1] + slopes[mid]) / 2.0)


@functools.cache
def _pairs(n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The indices (i, j), i < j, of every pair of `n` points."""
    first, second = np.triu_indices(n, 1)
    return first, second


def t_factor(z: float, dof: int) -> float:
    """Ratio of Student t's quantile to the normal quantile `z` (Cornish-Fisher expansion in 1/dof)."""
    v = float(dof)
    t = (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )
    return t / z


def bucket_of(t: float, kind: SeasonalityKind) -> int:
    """Day of week (Monday 0, UTC) or hour of day (UTC) of epoch time `t`; 0 without seasonality."""
    if kind == "day_of_week":
        return int((t // _DAY + 3) % 7)  # 1970-01-01 was a Thursday
    if kind == "hour_of_day":
        return int(t % _DAY // 3600)
    return 0


def _seasonal_fit(
    buckets: Sequence[int], members: dict[int, list[int]], resid: Sequence[float]
) -> tuple[dict[int, float], dict[int, int], list[float]]:
    """Per-bucket offsets, bucket sizes, and deseasonalized residuals (`buckets[i]` is the season of point i,
    `members[b]` the points of season b in order).

    A first pass with bucket medians finds the outliers; the offsets are then the means of each bucket
    without them (a mean from k points is about pi/2 times more precise than a median).
    """
    first = {b: median([resid[i] for i in idx]) for b, idx in members.items()}
    adjusted = [r - first[b] for b, r in zip(buckets, resid, strict=True)]
    center = median(adjusted)
    deviations = [abs(a - center) for a in adjusted]
    mad = median(deviations)
    limit = 3.5 * MAD_SCALE * mad if mad > 0 else math.inf
    kept = {b: [resid[i] for i in idx if deviations[i] <= limit] for b, idx in members.items()}
    offsets = {b: (sum(kept[b]) / len(kept[b]) if kept[b] else first[b]) for b in members}
    sizes = {b: len(kept[b]) for b in members}
    return offsets, sizes, [r - offsets[b] for b, r in zip(buckets, resid, strict=True)]


def score(history: Sequence[tuple[float, float]], point: tuple[float, float], cfg: DetectorConfig) -> Score:
    """Score `point` = (time, value) against the `history` points (time, value) before it.

    With `seasonality="auto"` the weekday (and, for sub-daily series, hour-of-day) profile is used when
    the history supports it and it explains the series clearly better than none (a mean absolute residual
    at most 75 % of the plain fit's).
    """
    every = [t for t, _ in history]
    # In time order (as histories are), a training window is a slice found by bisection.
    ordered = every if all(a <= b for a, b in itertools.pairwise(every)) else None
    if cfg.seasonality != "auto":
        return _score(history, point, cfg, ordered=ordered)
    slopes: dict[tuple[float, int, bool], float] = {}  # the fits below share training windows
    plain = _score(history, point, replace(cfg, seasonality="none"), slopes, ordered)
    if not plain.enough_data or plain.fit_error is None:
        return plain
    best, best_error = plain, plain.fit_error
    times = [t for t in every if t < point[0]]
    span = point[0] - times[0] if times else 0.0
    candidates: list[SeasonalityKind] = []
    if span >= 28 * _DAY:
        candidates.append("day_of_week")
    recent = times[-50:]
    if len(recent) >= 2 and (recent[-1] - recent[0]) / (len(recent) - 1) < 6 * 3600 and span >= 4 * _DAY:
        candidates.append("hour_of_day")
    for kind in candidates:
        other = _score(history, point, replace(cfg, seasonality=kind), slopes, ordered)
        if not other.enough_data or other.fit_error is None or other.fit_error >= best_error:
            continue  # (no better than the best so far: its baseline need not be fitted)
        # Compare on the same training points (a weekday profile trains on a longer window).
        window = replace(
            cfg,
            seasonality="none",
            training_s=max(cfg.training_s, 56 * _DAY) if kind == "day_of_week" else cfg.training_s,
        )
        baseline = (
            _score(history, point, window, slopes, ordered).fit_error
            if kind == "day_of_week"
            else plain.fit_error
        )
        if baseline is not None and other.fit_error < 0.85 * baseline:
            best, best_error = other, other.fit_error
    return best


def _score(
    history: Sequence[tuple[float, float]],
    point: tuple[float, float],
    cfg: DetectorConfig,
    slopes: dict[tuple[float, int, bool], float] | None = None,
    ordered: Sequence[float] | None = None,
) -> Score:
    """`ordered`: the history's times, when they are in order."""
    t_now, value = point
    # Weekday profiles need several weeks: at least 8 points per weekday.
    training_s = max(cfg.training_s, 56 * _DAY) if cfg.seasonality == "day_of_week" else cfg.training_s
    start = t_now - training_s
    if ordered is not None:
        inside = history[bisect.bisect_left(ordered, start) : bisect.bisect_left(ordered, t_now)]
        train = [(t, v) for t, v in inside if math.isfinite(v)]
    else:
        train = [(t, v) for t, v in history if start <= t < t_now and math.isfinite(v)]
    if len(train) > cfg.max_points:
        train = train[-cfg.max_points :]
    n = len(train)
    if n < cfg.min_training_size:
        return Score(value, None, False, n, note=f"{n} of {cfg.min_training_size} training points")
    # Volumes and durations vary multiplicatively (a weekend at 60 %, noise of a few percent, growth of a
    # percent a day): on a log scale those become additive and the spread comparable across the week. A
    # few empty runs in the history (zero rows is a finding of its own) do not prevent that.
    positive = [(t, v) for t, v in train if v > 0]
    use_log = value > 0 and len(positive) >= max(cfg.min_training_size, 0.8 * n)
    if use_log:
        train, n = positive, len(positive)
    ts = [t for t, _ in train]
    vs = [math.log(v) for _, v in train] if use_log else [v for _, v in train]
    train = list(zip(ts, vs, strict=True))
    observed = value
    seasonal = cfg.seasonality != "none"
    bucket_now = bucket_of(t_now, cfg.seasonality)
    buckets = [bucket_of(t, cfg.seasonality) for t in ts] if seasonal else []
    members: dict[int, list[int]] = {}
    for i, b in enumerate(buckets):
        members.setdefault(b, []).append(i)

    def fit(slope: float) -> tuple[float, float, int, list[float]]:
        """Expected value at t_now, residual sigma, points in t_now's bucket, residuals."""
        t_ref = ts[-1]
        detrended = [v - slope * (t - t_ref) for t, v in train] if slope else list(vs)
        if seasonal:
            offsets, sizes, resid = _seasonal_fit(buckets, members, detrended)
            offset, k = offsets.get(bucket_now), sizes.get(bucket_now, 0)
        else:
            resid, offset, k = detrended, 0.0, n
        center, sigma = robust_location_scale(resid)
        if use_log:
            # The structure is fitted on the log scale; the spread is measured as relative deviations
            # (value / expected - 1), so a spike and a drop of the same size score the same.
            rel_center, sigma = robust_location_scale([math.expm1(r - center) for r in resid])
            center += math.log1p(rel_center)
        expected = center + (offset or 0.0) + slope * (t_now - t_ref)
        return expected, sigma, k, resid

    flat = fit(0.0)
    # The training window (and so the slope) is a function of these, for one history and point.
    window = (training_s, cfg.max_points, use_log)
    if slopes is not None and window in slopes:
        slope = slopes[window]
    else:
        slope = theil_sen_slope(ts, vs) if n >= 8 else 0.0
        if slopes is not None:
            slopes[window] = slope
    chosen, trend = flat, 0.0
    if slope != 0.0:
        trended = fit(slope)
        # A trend is used only when it clearly explains the data: a noisy slope extrapolated to the point
        # under test would otherwise add error of its own.
        if trended[1] < 0.85 * flat[1]:
            chosen, trend = trended, slope
    expected, sigma, k, resid = chosen
    # How well the model explains the whole training set, outliers included (to compare seasonal models:
    # the trimmed spread cannot tell, since a plain fit trims a weekly dip away as outliers).
    mid = median(resid)
    fit_error = sum(abs(r - mid) for r in resid) / n
    if seasonal and k < 2:
        return Score(
            value, None, False, n, seasonal=True, note=f"{k} training points share this point's season"
        )
    # The spread is estimated from few points: scale it so that `sensitivity` keeps the false-alarm rate
    # of that many standard deviations of a normal distribution (Student t with the fit's degrees of freedom).
    dof = n - 1 - (1 if trend else 0) - (len(set(buckets)) - 1 if seasonal else 0)
    sigma *= t_factor(cfg.sensitivity, max(dof, 2))
    # The expected value is itself estimated: widen the spread by its error (a prediction interval).
    # A bucket mean from k points understates the residuals and carries 1 / k of a point's variance; a
    # slope extrapolated to the end of the window about 4 / n.
    inflation = 1 + 1 / n + (4 / n if trend else 0.0)
    if seasonal:
        inflation += 1 / k
        sigma *= math.sqrt(k / (k - 1))
    sigma *= math.sqrt(inflation)
    if use_log:
        expected = math.exp(min(expected, _MAX_EXP))
        spread = max(sigma, RELATIVE_SPREAD_FLOOR)
        deviation = value / expected - 1
        lower, upper = expected * (1 - cfg.sensitivity * spread), expected * (1 + cfg.sensitivity * spread)
    else:
        spread = max(sigma, RELATIVE_SPREAD_FLOOR * abs(expected))
        deviation = observed - expected
        lower, upper = expected - cfg.sensitivity * spread, expected + cfg.sensitivity * spread
    level = abs(expected)
    diff = value - expected
    change_pct = (100.0 * diff / level) if level > 0 else None
    if spread > 0:
        z: float | None = deviation / spread
    else:  # a series of constant zeros: any other value stands out, by how much is undefined
        z = None if deviation else 0.0
    beyond = abs(deviation) > cfg.sensitivity * spread if spread > 0 else deviation != 0
    anomaly: Literal["spike", "drop"] | None = None
    if beyond and abs(diff) >= cfg.min_delta:
        kind: Literal["spike", "drop"] = "spike" if diff > 0 else "drop"
        wanted = cfg.direction == "both" or cfg.direction == kind
        small = change_pct is not None and (
            (kind == "spike" and change_pct < cfg.ignore_spike_pct)
            or (kind == "drop" and -change_pct < cfg.ignore_drop_pct)
        )
        if wanted and not small:
            anomaly = kind
    return Score(
        value,
        anomaly,
        True,
        n,
        expected=expected,
        spread=spread * level if use_log else spread,
        z=z,
        lower=lower,
        upper=upper,
        change_pct=change_pct,
        trend_per_day=_per_day(trend, level, use_log) if trend else None,
        seasonal=seasonal,
        seasonality=cfg.seasonality,
        fit_error=fit_error if use_log else (fit_error / level if level > 0 else None),
    )


# exp() of more overflows a float. A slope fitted to points fractions of a second apart (a fast backfill) can
# be that steep: the trend is then no number a person could use, and must not crash the evaluation.
_MAX_EXP = 700.0


def _per_day(trend: float, level: float, use_log: bool) -> float | None:
    """The trend as a change per day (relative on the log scale), None when it is not a finite number."""
    per_day = trend * _DAY
    if use_log:
        per_day = math.expm1(per_day) * level if per_day < _MAX_EXP else math.inf
    return per_day if math.isfinite(per_day) else None
