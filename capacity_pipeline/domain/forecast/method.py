"""The forecasting method: a robust drift fitted after the last level shift, with a band drawn from
the series' own past errors. Pure numpy, vectorised over many series at once.

A series set is a 2-D array, one row per series and one column per day, NaN where a day has no
sample; the last column is the as-of day. Nothing here loops over days or over series: every
step is an array operation over the whole set (the few Python loops run over quantiles, steps or
chunks of series).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METHOD_NAME = "robust-drift-v1"

_MAD_TO_SD = 1.4826  # a median absolute deviation times this estimates a normal standard deviation
_Z90 = 1.2816  # the 90th percentile of the standard normal
# Steps (days) at which the series' own past errors are measured; each is spread over a week.
_ERROR_STEPS = (1, 7, 28, 91, 182)
_PHASES = 7
_MIN_POST_SHIFT_SAMPLES = 3  # a level shift is confirmed once this many samples follow it
_ACCELERATION_Z = 0.5  # a change of drift counts once it is this many standard errors from none
_PEAK_QUANTILE = 0.97  # about one day a month: how high a series' own excursions reach
_PEAK_WINDOW_DAYS = 35


@dataclass(frozen=True)
class MethodParams:
    """The method's knobs; the defaults are the ones the accuracy benchmark measured."""

    min_usable_days: int = 14  # fewer samples after the last level shift: insufficient_data
    max_days_to_limit: int = 730  # a limit reached later than this is reported as not reached (null)
    shift_z: float = 6.0  # a level shift is this many noise deviations away from the usual day's change
    shift_growth_days: float = 7.0  # ... and larger than this many days of the series' usual growth
    persistence_days: int = 7  # the new level must hold (as a median) over this many days
    week_days: int = 7  # the drift's stretches are whole weeks, so a weekly cycle cancels out
    drift_window_days: int = 91  # the drift is measured over the last 13 weeks (recent growth)
    level_window_days: int = 14  # the level is a robust intercept over the last two weeks

    def __post_init__(self) -> None:
        for name in (
            "min_usable_days",
            "max_days_to_limit",
            "persistence_days",
            "week_days",
            "drift_window_days",
            "level_window_days",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Projection:
    """What the method says about each series (row i of every array is series i).

    Sizes and growth are NaN unless `ok`; day counts are NaN when there is no limit, the path does
    not reach it within `max_days_to_limit`, or the series is not `ok`. `change_point` is the
    column of the first day at the level after the last shift (-1: no shift found).
    """

    horizons: tuple[int, ...]
    ok: np.ndarray  # (n,) bool
    change_point: np.ndarray  # (n,) int
    samples_used: np.ndarray  # (n,) int: samples from the last level shift to the as-of day
    growth_per_day: np.ndarray  # (n,) float: the P50 drift
    level: np.ndarray  # (n,) float: the fitted size on the as-of day
    p10: np.ndarray  # (n, len(horizons))
    p50: np.ndarray
    p90: np.ndarray
    days_to_limit_p10: np.ndarray  # (n,): the early case
    days_to_limit_p50: np.ndarray
    days_to_limit_p90: np.ndarray  # the late case


@dataclass(frozen=True)
class _Geometry:
    """Where the drift was measured: each end stretch's length, the distance between their
    middles, and how many days before the as-of day the drift's middle lies."""

    stretch: np.ndarray  # (n,) days
    distance: np.ndarray  # (n,) days
    lag: np.ndarray  # (n,) days


@dataclass(frozen=True)
class _Band:
    """Half-widths of the P10..P90 band as a function of the horizon h; index 0 below P50, 1 above.

    width(h) = sqrt(stationary + settled + walk * h + (slope * h)^2) + lean * (lag * h + h^2 / 2):
    the day-to-day noise a future sample has, the fitted level's own error, the random-walk part
    of growth, the fitted drift's uncertainty, and, on the side the drift has been moving, the
    growth a continuing change of drift would add.
    """

    stationary: np.ndarray  # (2, n)
    settled: np.ndarray  # (2, n)
    walk: np.ndarray  # (2, n)
    slope: np.ndarray  # (n,)
    lean: np.ndarray  # (2, n)
    lag: np.ndarray  # (n,)
    peak: np.ndarray  # (n,): how far the series' own excursions reach above its line

    def rows(self, index: np.ndarray) -> _Band:
        return _Band(
            self.stationary[:, index],
            self.settled[:, index],
            self.walk[:, index],
            self.slope[index],
            self.lean[:, index],
            self.lag[index],
            self.peak[index],
        )

    def widths(self, horizons: np.ndarray, *, stationary: bool = True) -> np.ndarray:
        """(2, n, len(horizons)) half-widths; without the stationary noise when `stationary` is False."""
        h = np.asarray(horizons, dtype=np.float64)[None, None, :]
        squared = (
            self.settled[:, :, None]
            + self.walk[:, :, None] * h
            + (self.slope[None, :, None] * h) ** 2
            + (self.stationary[:, :, None] if stationary else 0.0)
        )
        leaning = self.lean[:, :, None] * (self.lag[None, :, None] * h + h * h / 2)
        return np.sqrt(squared) + leaning


def project(
    values: np.ndarray,
    horizons: Sequence[int],
    limits: np.ndarray | None = None,
    params: MethodParams = MethodParams(),
) -> Projection:
    """Forecast every row of `values` (series x days, NaN = no sample, last column = as-of day)."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"values: expected a 2-D array (series x days), got {y.ndim} dimensions")
    if len(horizons) == 0 or min(horizons) < 1:
        raise ValueError(f"horizons: expected whole numbers of days >= 1, got {list(horizons)}")
    n, days = y.shape
    observed = ~np.isnan(y)
    columns = np.arange(days)

    change_point = _last_level_shift(y, observed, params)
    in_fit = observed & (columns >= np.maximum(change_point, 0)[:, None])
    samples_used = in_fit.sum(axis=1)
    recent = in_fit[:, max(days - params.level_window_days, 0) :].any(axis=1)
    drift, geometry = _drift(y, in_fit, params)
    level, level_samples = _level(y, in_fit, drift, params)
    band, measured = _band(y, in_fit, drift, level, geometry, level_samples, params)
    ok = (samples_used >= params.min_usable_days) & recent & ~np.isnan(drift) & measured

    steps = np.asarray(horizons)
    centre = level[:, None] + drift[:, None] * steps[None, :]
    below, above = band.widths(steps)
    p10, p50, p90 = (
        np.where(ok[:, None], np.maximum(path, 0.0), np.nan) for path in (centre - below, centre, centre + above)
    )
    limit = np.full(n, np.nan) if limits is None else np.asarray(limits, dtype=np.float64)
    early, middle, late = _days_to_limit(level, drift, band, limit, ok, params.max_days_to_limit)
    return Projection(
        horizons=tuple(int(h) for h in horizons),
        ok=ok,
        change_point=change_point,
        samples_used=samples_used,
        growth_per_day=np.where(ok, drift, np.nan),
        level=np.where(ok, level, np.nan),
        p10=p10,
        p50=p50,
        p90=p90,
        days_to_limit_p10=early,
        days_to_limit_p50=middle,
        days_to_limit_p90=late,
    )


def nan_quantiles(x: np.ndarray, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row quantiles ignoring NaN (numpy's linear rule) and the per-row count; NaN for empty rows.

    One sort for all the quantiles: np.nanquantile falls back to a Python loop over rows.
    """
    if x.shape[1] == 0:
        return np.full((len(quantiles), x.shape[0]), np.nan), np.zeros(x.shape[0], dtype=np.int64)
    ordered = np.sort(x, axis=1)  # NaN sorts last
    count = np.count_nonzero(~np.isnan(x), axis=1)
    rows = np.arange(x.shape[0])
    top = np.maximum(count - 1, 0)
    out = np.empty((len(quantiles), x.shape[0]))
    for index, q in enumerate(quantiles):
        position = q * top
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, top)
        below, above = ordered[rows, low], ordered[rows, high]
        out[index] = below + (above - below) * (position - low)
    out[:, count == 0] = np.nan
    return out, count


def _last_level_shift(y: np.ndarray, observed: np.ndarray, params: MethodParams) -> np.ndarray:
    """Per series, the column of the first day after the last confirmed level shift (-1: none).

    A day is a candidate when its change from the previous sample is far outside the series' own
    day-to-day changes (robust z-score) and larger than a week of its usual growth; it is confirmed
    when the median level of the days after it differs from the median of the days before it by at
    least half the jump, in the same direction, so a spike that comes back is not a shift.
    """
    n, days = y.shape
    columns = np.arange(days)
    seen = np.maximum.accumulate(np.where(observed, columns, -1), axis=1)
    previous = seen[:, :-1]  # the last sampled column before each column 1..days-1
    has_delta = observed[:, 1:] & (previous >= 0)
    previous_value = np.take_along_axis(y, np.maximum(previous, 0), axis=1)
    gap = columns[1:][None, :] - previous
    delta = np.where(has_delta, y[:, 1:] - previous_value, np.nan)
    rate = delta / np.where(has_delta, gap, 1)
    # The usual growth per day from week-apart samples: a day-to-day median can be fooled by a
    # series that alternates (+20, 0, +20, ...), which grows by 10 a day and not by 0.
    week = params.week_days
    weekly = (y[:, week:] - y[:, :-week]) / week if days > week else np.full((n, 1), np.nan)
    (usual,), weeks = nan_quantiles(weekly, [0.5])
    fallback = weeks == 0
    if fallback.any():
        (usual[fallback],), _ = nan_quantiles(rate[fallback], [0.5])
    usual = np.nan_to_num(usual)
    (spread,), _ = nan_quantiles(np.abs(rate - usual[:, None]), [0.5])
    noise = _MAD_TO_SD * np.nan_to_num(spread)
    floor = np.maximum(params.shift_z * noise, params.shift_growth_days * np.abs(usual))

    excess = delta - usual[:, None] * gap
    threshold = np.maximum(params.shift_z * noise[:, None] * np.sqrt(gap), floor[:, None])
    rows, cols = np.nonzero(has_delta & (np.abs(excess) > threshold))
    change_point = np.full(n, -1, dtype=np.int64)
    if rows.size == 0:
        return change_point
    day = cols + 1  # the first day at the new level
    jump = excess[rows, cols]
    reference = previous_value[rows, cols]
    p = params.persistence_days

    def window(offsets: np.ndarray) -> np.ndarray:
        at = day[:, None] + offsets[None, :]
        inside = (at >= 0) & (at < days)
        sampled = y[rows[:, None], np.clip(at, 0, days - 1)]
        # Relative to the sample before the jump and with the usual growth taken out, so the test
        # depends on differences only (adding a constant to a series changes nothing).
        detrended = (sampled - reference[:, None]) - usual[rows, None] * (at - day[:, None])
        return np.where(inside, detrended, np.nan)

    (before,), _ = nan_quantiles(window(np.arange(-p, 0)), [0.5])
    (after,), after_count = nan_quantiles(window(np.arange(0, p)), [0.5])
    held = after - before
    confirmed = (
        (after_count >= _MIN_POST_SHIFT_SAMPLES)
        & (np.sign(held) == np.sign(jump))
        & (np.abs(held) >= 0.5 * np.abs(jump))
        & (np.abs(held) > floor[rows])
    )
    np.maximum.at(change_point, rows[confirmed], day[confirmed])
    return change_point


def _stretches(in_fit: np.ndarray, begin: np.ndarray, week: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From `begin` to the last column: the stretch length (whole weeks when there are three),
    and the masks of the first and the last stretch."""
    days = in_fit.shape[1]
    columns = np.arange(days)[None, :]
    span = days - begin
    stretch = np.where(span >= 3 * week, week * (span // (3 * week)), span // 3)
    left = in_fit & (columns >= begin[:, None]) & (columns < (begin + stretch)[:, None])
    right = in_fit & (columns >= (days - stretch)[:, None])
    return stretch, left, right


def _drift(y: np.ndarray, in_fit: np.ndarray, params: MethodParams) -> tuple[np.ndarray, _Geometry]:
    """The growth per day: a resistant line (Tukey's groups) over the recent fitted days.

    The slope between the median of the first and of the last stretch of the window: medians
    ignore single outliers, and stretches of whole weeks cancel a weekly cycle.
    """
    # Only the window's columns take part: slicing first keeps the sorts to the window's width.
    offset = max(y.shape[1] - params.drift_window_days, 0)
    y, in_fit = y[:, offset:], in_fit[:, offset:]
    n, days = y.shape
    columns = np.arange(days)[None, :]
    begin = np.where(in_fit.any(axis=1), np.argmax(in_fit, axis=1), days)
    stretch, left, right = _stretches(in_fit, begin, params.week_days)
    x_left, x_right = _median_column(left), _median_column(right)
    distance = x_right - x_left
    usable = (stretch >= 1) & (distance > 0)
    ahead = columns - (days - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        y_left, y_right = _medians_of(y, left, right)
        rough = np.where(usable, (y_right - y_left) / distance, np.nan)
        # Once more on the values with the rough trend taken out: with the trend in, a stretch's
        # median is one sample (the middle day's) instead of the middle of all its samples.
        r_left, r_right = _medians_of(y - rough[:, None] * ahead, left, right)
        drift = rough + (r_right - r_left) / distance
    lag = (days - 1) - (x_left + x_right) / 2
    return drift, _Geometry(stretch.astype(np.float64), distance, lag)


def _median_column(mask: np.ndarray) -> np.ndarray:
    """Per row, the median of the column numbers under `mask` (NaN for an empty row), without a sort:
    the columns are in order already, so the middle ones are found by counting."""
    count = mask.sum(axis=1)
    seen = np.cumsum(mask, axis=1)
    low = np.argmax(seen >= ((count - 1) // 2 + 1)[:, None], axis=1)
    high = np.argmax(seen >= (count // 2 + 1)[:, None], axis=1)
    return np.where(count > 0, (low + high) / 2, np.nan)


def _medians_of(values: np.ndarray, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the median of the values under each mask (one sort for both)."""
    n = values.shape[0]
    (medians,), _ = nan_quantiles(
        np.concatenate([np.where(left, values, np.nan), np.where(right, values, np.nan)]), [0.5]
    )
    return medians[:n], medians[n:]


def _level(y: np.ndarray, in_fit: np.ndarray, drift: np.ndarray, params: MethodParams) -> tuple[np.ndarray, np.ndarray]:
    """The size on the as-of day: the median of the recent samples, each carried forward by the drift."""
    days = y.shape[1]
    start = max(days - params.level_window_days, 0)
    ahead = (days - 1 - np.arange(start, days))[None, :]
    carried = np.where(in_fit[:, start:], y[:, start:] + drift[:, None] * ahead, np.nan)
    (level,), count = nan_quantiles(carried, [0.5])
    return level, count


def _band(
    y: np.ndarray,
    in_fit: np.ndarray,
    drift: np.ndarray,
    level: np.ndarray,
    geometry: _Geometry,
    level_samples: np.ndarray,
    params: MethodParams,
) -> tuple[_Band, np.ndarray]:
    """Fit the band's terms to the series' own errors after the last shift.

    For each step h the in-sample error is y[t+h] - y[t] - drift * h; its P10 and P90 (relative to
    its median) are the band's half-widths at h. A line through (h, width^2) separates the noise
    (constant) from the random walk (growing with h); the drift's own uncertainty, the level's, and
    a change of drift under way are added from the same two terms and the fitted geometry.
    """
    n, days = y.shape
    origin = np.arange(days)
    steps, squared = [], []
    for base in _ERROR_STEPS:  # a handful of steps, each one array operation over all series
        # Each origin adds its own weekday offset (0..6) to the step, so every step mixes all
        # phases of a weekly cycle: the cycle lands in the constant term, not in the walk.
        if days - base < 2 * (base + _PHASES // 2):  # too few pairs for any series: skip the work
            break
        step = base + origin % _PHASES
        target = origin + step
        inside = target < days
        target = np.where(inside, target, 0)
        pair = in_fit & in_fit[:, target] & inside[None, :]
        errors = np.where(pair, y[:, target] - y - drift[:, None] * step[None, :], np.nan)
        (p10, p50, p90), count = nan_quantiles(errors, [0.1, 0.5, 0.9])
        mean_step = np.where(pair, step[None, :], 0).sum(axis=1) / np.maximum(count, 1)
        # Enough pairs for a quantile, and at least two stretches that do not overlap.
        usable = count >= np.maximum(params.min_usable_days // 2, 2 * mean_step)
        squared.append(np.where(usable[None, :], np.stack([p50 - p10, p90 - p50]) ** 2, np.nan))
        # Spread about the errors' own middle misses the part of a random walk that overlapping
        # pairs share, about step / (pairs + step) of it (as in the variance-ratio test): the walk
        # term is fitted against the step it effectively measured.
        steps.append(mean_step * (1.0 - mean_step / np.maximum(count + mean_step, 1)))
    if not steps:  # a single day: nothing to measure
        zero = np.zeros((2, n))
        return _Band(zero, zero, zero, np.zeros(n), zero, np.zeros(n), np.zeros(n)), np.zeros(n, dtype=bool)
    w = np.stack(squared, axis=-1)  # (2, n, steps)
    noise, walk = _fit_noise_and_walk(np.stack(steps, axis=-1)[None, :, :], w)
    measured = ~np.isnan(w).all(axis=-1).any(axis=0)
    # An in-sample error starts from one noisy sample, a forecast from the fitted level: half of
    # the constant term is the origin's noise. The level itself is off by the median's share of the
    # noise and, on a random walk, by how far the walk moved since the middle of its window.
    noise = noise / 2
    k = np.maximum(level_samples, 1).astype(np.float64)
    settled = noise * np.pi / 2 / k + walk * (k - 1) * (2 * k - 1) / (6 * k)
    widest_noise, widest_walk = noise.max(axis=0), walk.max(axis=0)
    slope = np.sqrt(_slope_variance(widest_noise, widest_walk, geometry.stretch, geometry.distance))
    lean = _lean(y, in_fit, drift, widest_noise, widest_walk, params)
    peak = _peak(y, in_fit, drift, level)
    return _Band(noise, settled, walk, slope, lean, geometry.lag, peak), measured


def _slope_variance(noise: np.ndarray, walk: np.ndarray, stretch: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """How much a slope between two stretches varies, in the band's (P90) units.

    For stretches of m days whose middles are d days apart, the slope between their middles varies
    by walk * (d - m/3) / d^2 (the increments between them) plus pi/2 * 2 * noise / m / d^2 (the
    medians of their noise).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = (walk * (distance - stretch / 3) + np.pi * noise / stretch) / distance**2
    return np.nan_to_num(np.maximum(variance, 0.0))


def _lean(
    y: np.ndarray,
    in_fit: np.ndarray,
    drift: np.ndarray,
    noise: np.ndarray,
    walk: np.ndarray,
    params: MethodParams,
) -> np.ndarray:
    """(2, n) the change of drift per day under way, on the side it moves (0 when not significant).

    Over the whole fitted stretch: the drift of its first two thirds against that of its last two
    thirds. Only the part beyond _ACCELERATION_Z standard errors counts, so a steady series leans
    nowhere; an accelerating one widens the band above P50 (and a decelerating one below).
    """
    n, days = y.shape
    columns = np.arange(days)[None, :].astype(np.float64)
    first = np.where(in_fit.any(axis=1), np.argmax(in_fit, axis=1), days)
    stretch, left, right = _stretches(in_fit, first, params.week_days)
    middle_start = first + (days - first - stretch) // 2
    middle = in_fit & (columns >= middle_start[:, None]) & (columns < (middle_start + stretch)[:, None])
    detrended = y - drift[:, None] * (columns - (days - 1))
    x_left, x_middle, x_right = (_median_column(mask) for mask in (left, middle, right))
    (r,), _ = nan_quantiles(np.concatenate([np.where(m, detrended, np.nan) for m in (left, middle, right)]), [0.5])
    r_left, r_middle, r_right = r.reshape(3, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        early_drift = (r_middle - r_left) / (x_middle - x_left)
        late_drift = (r_right - r_middle) / (x_right - x_middle)
        span = (x_right - x_left) / 2
        change = (late_drift - early_drift) / span
        error = (
            np.sqrt(
                _slope_variance(noise, walk, stretch, x_middle - x_left)
                + _slope_variance(noise, walk, stretch, x_right - x_middle)
            )
            / _Z90
            / span
        )
    significant = np.nan_to_num(np.maximum(np.abs(change) - _ACCELERATION_Z * error, 0.0))
    return np.stack([np.where(change < 0, significant, 0.0), np.where(change > 0, significant, 0.0)])


def _peak(y: np.ndarray, in_fit: np.ndarray, drift: np.ndarray, level: np.ndarray) -> np.ndarray:
    """How far above its fitted line a series' own recent excursions reach (about one day a month).

    A limit is reached on the first day a sample reaches it, which is the day an excursion does,
    not the day the line does: month-end loads and temporary space fill a disk first.
    """
    days = y.shape[1]
    start = max(days - _PEAK_WINDOW_DAYS, 0)
    ahead = np.arange(start, days)[None, :] - (days - 1)
    residual = np.where(in_fit[:, start:], y[:, start:] - level[:, None] - drift[:, None] * ahead, np.nan)
    (middle, high), _ = nan_quantiles(residual, [0.5, _PEAK_QUANTILE])
    return np.nan_to_num(np.maximum(high - middle, 0.0))


def _days_to_limit(
    level: np.ndarray,
    drift: np.ndarray,
    band: _Band,
    limit: np.ndarray,
    ok: np.ndarray,
    max_days: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first whole day (0..max_days) on which the early, middle and late paths reach the limit.

    The paths are the line plus the series' peak excursion, with the band's growing part (without
    the day-to-day noise, which the peak stands for) above for the early case and below for the
    late one. They are ordered day by day, so their first days are ordered too.
    """
    n = level.shape[0]
    result = np.full((3, n), np.nan)
    rows = np.nonzero(ok & ~np.isnan(limit))[0]
    h = np.arange(max_days + 1)
    chunk = max(1, 2_000_000 // h.size)  # bounded memory whatever the number of series
    for start in range(0, rows.size, chunk):  # chunks of series, each one array operation
        part = rows[start : start + chunk]
        sub = band.rows(part)
        below, above = sub.widths(h, stationary=False)
        centre = level[part, None] + drift[part, None] * h[None, :]
        peak = sub.peak[:, None]
        for index, path in enumerate((centre + above + peak, centre + peak / 2, centre - below)):
            reached = path >= limit[part, None]
            result[index, part] = np.where(reached.any(axis=1), np.argmax(reached, axis=1), np.nan)
    return result[0], result[1], result[2]


def _fit_noise_and_walk(h: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of width^2 = noise + walk * h over the usable steps, both terms >= 0.

    With one usable step the whole width is taken as random walk: the cautious reading.
    """
    valid = ~np.isnan(w)
    count = valid.sum(axis=-1)
    hv = np.where(valid, h, 0.0)
    wv = np.where(valid, w, 0.0)
    sum_h, sum_w = hv.sum(axis=-1), wv.sum(axis=-1)
    sum_hh, sum_hw = (hv * hv).sum(axis=-1), (hv * wv).sum(axis=-1)
    denominator = count * sum_hh - sum_h**2
    with np.errstate(invalid="ignore", divide="ignore"):
        walk = np.where(denominator > 0, (count * sum_hw - sum_h * sum_w) / denominator, np.nan)
        noise = np.where(denominator > 0, (sum_w - walk * sum_h) / count, np.nan)
        through_origin = np.where(sum_hh > 0, sum_hw / sum_hh, 0.0)  # walk alone
        mean_w = np.where(count > 0, sum_w / np.maximum(count, 1), 0.0)  # noise alone
    single = denominator <= 0
    walk = np.where(single, np.where(count > 0, sum_w / np.maximum(sum_h, 1e-300), 0.0), walk)
    noise = np.where(single, 0.0, noise)
    negative_walk = walk < 0
    walk = np.where(negative_walk, 0.0, walk)
    noise = np.where(negative_walk, mean_w, noise)
    negative_noise = noise < 0
    noise = np.where(negative_noise, 0.0, noise)
    walk = np.where(negative_noise, through_origin, walk)
    return noise, walk
