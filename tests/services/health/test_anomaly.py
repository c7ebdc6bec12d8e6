"""Properties of the robust anomaly detector on generated series."""

from __future__ import annotations

import math
import random

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.health.anomaly import (
    DetectorConfig,
    bucket_of,
    robust_location_scale,
    score,
    theil_sen_slope,
)

DAY = 86400.0
T0 = 1_780_000_000.0 - (1_780_000_000.0 % DAY)

levels = st.floats(min_value=1.0, max_value=1e9, allow_nan=False, allow_infinity=False)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def noisy(seed: int, level: float, n: int = 40, noise: float = 0.05) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(T0 + i * DAY, level * (1 + rng.gauss(0, noise))) for i in range(n)]


@given(level=levels, n=st.integers(min_value=7, max_value=60))
def test_constant_series_has_no_finding(level: float, n: int) -> None:
    series = [(T0 + i * DAY, level) for i in range(n)]
    result = score(series, (T0 + n * DAY, level), DetectorConfig())
    assert result.enough_data and result.anomaly is None
    assert result.z is not None and abs(result.z) < 1e-9


@given(
    seed=seeds,
    level=levels,
    factor=st.floats(min_value=1e-3, max_value=1e3),
    offset=st.floats(min_value=-0.5, max_value=0.5),
)
def test_scale_invariance(seed: int, level: float, factor: float, offset: float) -> None:
    series = noisy(seed, level)
    point = (T0 + 40 * DAY, level * (1 + offset))
    base = score(series, point, DetectorConfig())
    scaled = score([(t, v * factor) for t, v in series], (point[0], point[1] * factor), DetectorConfig())
    assert base.z is not None and scaled.z is not None
    assert math.isclose(base.z, scaled.z, rel_tol=1e-6, abs_tol=1e-6)
    # the verdict is the same unless the point sits right on the threshold
    assume(abs(abs(base.z) - 3.0) > 1e-6)
    assert base.anomaly == scaled.anomaly


@given(
    seed=seeds,
    level=levels,
    sigmas=st.floats(min_value=8, max_value=50),
    up=st.booleans(),
    outlier_at=st.integers(min_value=0, max_value=39),
)
@settings(max_examples=200)
def test_injected_outlier_beyond_sensitivity_is_found(
    seed: int, level: float, sigmas: float, up: bool, outlier_at: int
) -> None:
    noise = 0.02
    series = noisy(seed, level, noise=noise)
    # an outlier already in the history must not hide the new one (robust statistics)
    t, v = series[outlier_at]
    series[outlier_at] = (t, v * 3)
    sign = 1 if up else -1
    value = level * math.exp(sign * sigmas * noise)  # far beyond 3 standard deviations on either scale
    result = score(series, (T0 + 40 * DAY, value), DetectorConfig())
    assert result.anomaly == ("spike" if up else "drop")
    only_spikes = score(series, (T0 + 40 * DAY, value), DetectorConfig(direction="spike"))
    assert (only_spikes.anomaly is not None) == up


@given(seed=seeds, level=st.floats(min_value=100, max_value=1e8), dip=st.floats(min_value=0.2, max_value=0.7))
@settings(max_examples=50, deadline=None)
def test_weekday_seasonality_does_not_flag_the_weekend_dip(seed: int, level: float, dip: float) -> None:
    rng = random.Random(seed)
    series = []
    for i in range(84):
        t = T0 + i * DAY
        weekend = bucket_of(t, "day_of_week") >= 5
        series.append((t, level * (dip if weekend else 1.0) * (1 + rng.gauss(0, 0.02))))
    # next Saturday, at its normal (low) level
    t_next = T0 + 84 * DAY
    while bucket_of(t_next, "day_of_week") != 5:
        t_next += DAY
    seasonal = score(series, (t_next, level * dip), DetectorConfig(seasonality="day_of_week"))
    assert seasonal.anomaly is None and seasonal.seasonal
    plain = score(series, (t_next, level * dip), DetectorConfig())
    assert plain.anomaly == "drop"  # without seasonality the same dip is an anomaly


def test_not_enough_training_data() -> None:
    result = score([(T0, 1.0), (T0 + DAY, 1.0)], (T0 + 2 * DAY, 100.0), DetectorConfig())
    assert not result.enough_data and result.anomaly is None and "2 of 7" in result.note


def test_ignore_small_changes_and_min_delta() -> None:
    series = [(T0 + i * DAY, 1000.0 + (i % 2)) for i in range(20)]
    point = (T0 + 20 * DAY, 1100.0)  # +10 %: beyond the (tiny) spread
    assert score(series, point, DetectorConfig()).anomaly == "spike"
    assert score(series, point, DetectorConfig(ignore_spike_pct=15)).anomaly is None
    assert score(series, point, DetectorConfig(min_delta=200)).anomaly is None


def test_zeros_history_with_nonzero_point() -> None:
    series = [(T0 + i * DAY, 0.0) for i in range(10)]
    result = score(series, (T0 + 10 * DAY, 5.0), DetectorConfig())
    assert result.anomaly == "spike" and result.z is None


@given(seed=seeds, dip=st.floats(min_value=0.3, max_value=0.7))
@settings(max_examples=30, deadline=None)
def test_auto_seasonality_finds_the_weekly_profile(seed: int, dip: float) -> None:
    rng = random.Random(seed)
    weekly = [
        (
            T0 + i * DAY,
            5000 * (dip if bucket_of(T0 + i * DAY, "day_of_week") >= 5 else 1) * (1 + rng.gauss(0, 0.03)),
        )
        for i in range(70)
    ]
    t_next = T0 + 70 * DAY
    while bucket_of(t_next, "day_of_week") != 6:
        t_next += DAY
    result = score(weekly, (t_next, 5000 * dip), DetectorConfig(seasonality="auto"))
    assert result.seasonality == "day_of_week" and result.anomaly is None
    flat = [(t, 5000 * (1 + rng.gauss(0, 0.03))) for t, _ in weekly]
    # on a series without a weekly profile, auto may or may not fit one, but a normal value stays normal
    assert score(flat, (t_next, 5000.0), DetectorConfig(seasonality="auto")).anomaly is None


@given(st.floats(0.001, 1.0), st.lists(st.integers(1, 10_000_000), min_size=13, max_size=30))
def test_points_fractions_of_a_second_apart_never_overflow(gap_s: float, values: list[int]) -> None:
    """A fast backfill materializes an asset many times within a second: the fitted slope per second is
    huge, and its trend per day is no finite number. The score must still be computed (found by a
    benchmark: OverflowError in math.expm1 crashed the health handler)."""
    series = [(1_780_000_000.0 + i * gap_s, float(v)) for i, v in enumerate(values)]
    *past, point = series
    s = score(past, point, DetectorConfig(min_training_size=5))
    assert s.trend_per_day is None or math.isfinite(s.trend_per_day)
    assert s.expected is None or math.isfinite(s.expected)


def _reference_location_scale(residuals: list[float], cut: float = 3.5) -> tuple[float, float]:
    """robust_location_scale as first written: the residuals within the cut filtered one by one."""
    ordered = sorted(residuals)
    n = len(ordered)
    center = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0
    deviations = [abs(r - center) for r in residuals]
    ordered = sorted(deviations)
    mad = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0
    if mad == 0:
        return center, 1.2533 * sum(deviations) / len(deviations)
    limit = cut * 1.4826 * mad
    kept = [r for r, d in zip(residuals, deviations, strict=True) if d <= limit]
    if len(kept) < 3:
        return center, 1.4826 * mad
    mean = sum(kept) / len(kept)
    return mean, math.sqrt(sum([(r - mean) ** 2 for r in kept]) / (len(kept) - 1))


def _reference_slope(ts: list[float], vs: list[float]) -> float:
    """The median of every pairwise slope (up to 24 points, below the subsampling)."""
    pairs = [(i, j) for i in range(len(ts)) for j in range(i + 1, len(ts)) if ts[j] != ts[i]]
    slopes = [(vs[j] - vs[i]) / (ts[j] - ts[i]) for i, j in pairs]
    if not slopes:
        return 0.0
    ordered = sorted(slopes)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0


values = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6),
    st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf, 1e300]),
)


@settings(max_examples=300)
@given(st.lists(values, min_size=1, max_size=60))
def test_location_scale_keeps_what_the_cut_keeps(residuals: list[float]) -> None:
    """The shortcut when no residual is cut (NaN aside) gives the very floats of the filter."""
    got, want = [], []
    for f, out in ((robust_location_scale, got), (_reference_location_scale, want)):
        try:
            out.append(repr(f(residuals)))
        except (OverflowError, ValueError) as exc:
            out.append(type(exc).__name__)
    assert got == want


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 40), st.floats(-1e3, 1e3)), min_size=2, max_size=24))
def test_theil_sen_slope_is_the_median_of_every_pairwise_slope(points: list[tuple[int, float]]) -> None:
    ts = [float(t) for t, _ in sorted(points, key=lambda p: p[0])]
    vs = [v for _, v in sorted(points, key=lambda p: p[0])]
    assert repr(theil_sen_slope(ts, vs)) == repr(_reference_slope(ts, vs))
