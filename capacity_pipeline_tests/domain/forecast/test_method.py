"""The forecasting method on worked examples (numbers written out) and on generated series (properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from capacity_pipeline.domain.forecast.method import MethodParams, nan_quantiles, project

HORIZONS = (30, 90, 180)
DAYS_60 = np.arange(60, dtype=np.float64)


def _one(values: np.ndarray, limit: float | None = None, **params: int):
    limits = None if limit is None else np.array([limit], dtype=np.float64)
    return project(np.atleast_2d(np.asarray(values, dtype=np.float64)), HORIZONS, limits, MethodParams(**params))


def test_a_known_slope_is_recovered():
    # 1000 MB growing 10 MB a day for 60 days, each sample 5 MB above or below the line.
    values = 1000 + 10 * DAYS_60 + np.where(DAYS_60 % 2 == 0, 5, -5)
    result = _one(values, limit=2000)
    assert result.ok[0]
    assert result.change_point[0] == -1
    assert result.samples_used[0] == 60
    assert result.growth_per_day[0] == 10.0
    assert result.level[0] == 1590.0  # 1000 + 10 * 59 on the as-of day
    assert result.p50[0].tolist() == [1890.0, 2490.0, 3390.0]  # 1590 + 10 * h
    assert (result.p10[0] < result.p50[0]).all() and (result.p50[0] < result.p90[0]).all()
    assert (result.p90[0] - result.p10[0] < 0.02 * result.p50[0]).all()  # a quiet series: a narrow band
    # 1590 + 10 * d >= 2000 first on day 41; the early and late cases a day either side.
    assert (result.days_to_limit_p10[0], result.days_to_limit_p50[0], result.days_to_limit_p90[0]) == (40, 41, 42)


def test_a_purge_is_found_on_its_date():
    # 5000 MB + 20 MB a day; on day 90 a purge removes 2000 MB; as of day 119.
    values = 5000 + 20 * np.arange(120, dtype=np.float64)
    values[90:] -= 2000
    result = _one(values, limit=8000)
    assert result.change_point[0] == 90
    assert result.samples_used[0] == 30  # days 90..119
    assert result.growth_per_day[0] == 20.0  # a fit across the purge would say it shrinks
    assert result.level[0] == 5380.0  # 5000 + 20 * 119 - 2000
    assert result.p50[0].tolist() == [5980.0, 7180.0, 8980.0]
    assert result.days_to_limit_p50[0] == 131  # 5380 + 20 * 131 = 8000


def test_a_migration_jump_is_found_on_its_date():
    values = 2000 + 5 * np.arange(100, dtype=np.float64)
    values[70:] += 3000  # a database moved in on day 70
    result = _one(values)
    assert result.change_point[0] == 70
    assert result.growth_per_day[0] == 5.0
    assert result.level[0] == 5495.0  # 2000 + 5 * 99 + 3000


def test_thin_data_is_refused():
    refused = _one(np.full(13, 100.0), limit=50)
    assert not refused.ok[0]
    assert refused.samples_used[0] == 13
    for values in (refused.p10, refused.p50, refused.p90, refused.growth_per_day[None, :]):
        assert np.isnan(values).all()
    assert np.isnan([refused.days_to_limit_p10[0], refused.days_to_limit_p50[0], refused.days_to_limit_p90[0]]).all()
    assert _one(np.full(14, 100.0)).ok[0]  # 14 usable days are enough
    assert not _one(np.full(14, 100.0), min_usable_days=15).ok[0]  # the minimum is a parameter


def test_too_few_days_after_a_purge_are_refused_and_say_when_it_was():
    values = 5000 + 20 * np.arange(120, dtype=np.float64)
    values[110:] -= 2000  # ten days before the as-of day
    result = _one(values)
    assert not result.ok[0]
    assert result.change_point[0] == 110
    assert result.samples_used[0] == 10


def test_a_spike_that_comes_back_does_not_move_the_fit():
    values = 1000 + 10 * DAYS_60
    values[40] = 3000  # one wrong sample
    values[50:52] = 200  # two days of a failed collection
    result = _one(values)
    assert result.change_point[0] == -1
    assert result.growth_per_day[0] == 10.0
    assert result.level[0] == 1590.0


def test_a_noisy_series_gets_a_wide_band():
    rng = np.random.default_rng(3)
    line = 10_000 + 20 * np.arange(200, dtype=np.float64)
    quiet = _one(np.round(line + rng.normal(0, 5, 200)))
    noisy = _one(np.round(line + rng.normal(0, 500, 200)))
    assert quiet.ok[0] and noisy.ok[0]
    width = lambda r: r.p90[0] - r.p10[0]  # noqa: E731
    assert (width(noisy) > 20 * width(quiet)).all()


def test_flat_and_shrinking_series_have_no_crossing_day():
    shrinking = _one(5000 - 3 * np.arange(100, dtype=np.float64), limit=6000)
    assert shrinking.growth_per_day[0] == -3.0
    assert shrinking.p50[0].tolist() == [4613.0, 4433.0, 4163.0]  # 4703 - 3 * h
    assert np.isnan([shrinking.days_to_limit_p10[0], shrinking.days_to_limit_p50[0]]).all()
    flat = _one(np.full(100, 700.0), limit=701)
    assert flat.growth_per_day[0] == 0.0
    assert np.isnan([flat.days_to_limit_p10[0], flat.days_to_limit_p50[0], flat.days_to_limit_p90[0]]).all()


def test_a_limit_already_reached_is_day_zero():
    result = _one(1000 + 10 * DAYS_60, limit=1500)
    assert (result.days_to_limit_p10[0], result.days_to_limit_p50[0], result.days_to_limit_p90[0]) == (0, 0, 0)


def test_a_limit_beyond_the_reach_is_not_reached():
    result = _one(1000 + 10 * DAYS_60, limit=1590 + 10 * 731)  # day 731, the reach is 730
    assert np.isnan(result.days_to_limit_p50[0])


def test_a_gap_before_the_as_of_day_still_projects_from_the_line():
    values = 1000 + 10 * DAYS_60
    values[-5:] = np.nan  # the last five days were not collected
    result = _one(values)
    assert result.ok[0]
    assert result.level[0] == 1590.0  # carried forward to the as-of day by the drift
    recent = values.copy()
    recent[-15:] = np.nan  # nothing in the last two weeks: the series stopped reporting
    assert not _one(recent).ok[0]


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="values"):
        project(np.zeros(5), HORIZONS)
    with pytest.raises(ValueError, match="horizons"):
        project(np.zeros((1, 5)), (0, 30))
    with pytest.raises(ValueError, match="min_usable_days"):
        MethodParams(min_usable_days=0)


def test_nan_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 40))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[7] = np.nan
    (q10, q50, q90), count = nan_quantiles(x, [0.1, 0.5, 0.9])
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanquantile(x, [0.1, 0.5, 0.9], axis=1)
    np.testing.assert_allclose(np.stack([q10, q50, q90]), expected, equal_nan=True)
    assert count[7] == 0 and count.tolist() == (~np.isnan(x)).sum(axis=1).tolist()


# Generated series: a line, a random walk, noise, a step and gaps, as whole MB (what WhaleFall stores).
@st.composite
def series(draw: st.DrawFn) -> np.ndarray:
    days = draw(st.integers(1, 150))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    start = draw(st.floats(0, 1e6))
    growth = draw(st.floats(-200, 200))
    walk = draw(st.floats(0, 100))
    noise = draw(st.floats(0, 500))
    t = np.arange(days)
    values = start + growth * t + np.cumsum(rng.normal(0, walk, days)) + rng.normal(0, noise, days)
    if draw(st.booleans()):
        values[draw(st.integers(0, days - 1)) :] += draw(st.floats(-5e5, 5e5))
    values = np.round(values)
    values[rng.random(days) < draw(st.floats(0, 0.5))] = np.nan
    return values


@st.composite
def series_sets(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.lists(series(), min_size=1, max_size=6))
    days = max(len(row) for row in rows)
    return np.stack([np.concatenate([np.full(days - len(row), np.nan), row]) for row in rows])


def _days(result) -> np.ndarray:
    return np.stack([result.days_to_limit_p10, result.days_to_limit_p50, result.days_to_limit_p90])


@settings(max_examples=150, deadline=None)
@given(series_sets(), st.floats(1, 2e6))
def test_the_band_and_the_days_are_ordered(values, limit):
    result = project(values, HORIZONS, np.full(values.shape[0], limit))
    ok = result.ok
    event(f"{ok.sum()} of {ok.size} series forecast")
    assert (result.p10[ok] <= result.p50[ok]).all() and (result.p50[ok] <= result.p90[ok]).all()
    assert not np.isnan(result.p50[ok]).any() and np.isnan(result.p50[~ok]).all()
    early, middle, late = np.where(np.isnan(_days(result)), np.inf, _days(result))  # null: not reached
    assert (early <= middle).all() and (middle <= late).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 10**7), st.integers(14, 200), st.integers(1, 10**6))
def test_a_constant_series_has_zero_growth_and_no_crossing(size, days, headroom):
    result = _one(np.full(days, float(size)), limit=size + headroom)
    assert result.ok[0]
    assert result.growth_per_day[0] == 0
    for band in (result.p10, result.p50, result.p90):
        assert band[0].tolist() == [size] * len(HORIZONS)
    assert np.isnan(_days(result)).all()


@settings(max_examples=100, deadline=None)
@given(series_sets(), st.integers(0, 10**6))
def test_adding_a_constant_shifts_every_projection_by_it(values, constant):
    before = project(values, HORIZONS)
    after = project(values + constant, HORIZONS)
    assert after.ok.tolist() == before.ok.tolist()
    assert after.change_point.tolist() == before.change_point.tolist()
    assert after.samples_used.tolist() == before.samples_used.tolist()
    tolerance = 1e-9 * (np.abs(np.nan_to_num(values)).max() + constant + 1)
    np.testing.assert_allclose(after.growth_per_day, before.growth_per_day, atol=tolerance)
    for name in ("p10", "p50", "p90"):
        old, new = getattr(before, name), getattr(after, name)
        above_zero = old > 0  # sizes are never below zero: a projection cut at zero is not shifted
        np.testing.assert_allclose(new[above_zero], old[above_zero] + constant, atol=tolerance)


@settings(max_examples=100, deadline=None)
@given(series_sets(), st.integers(-4, 6), st.floats(1, 2e6))
def test_scaling_by_k_scales_every_projection_by_k(values, exponent, limit):
    # Powers of two scale exactly in floating point, so the comparison is exact: the method, not rounding.
    k = 2.0**exponent
    limits = np.full(values.shape[0], limit)
    before = project(values, HORIZONS, limits)
    after = project(values * k, HORIZONS, limits * k)
    assert after.ok.tolist() == before.ok.tolist()
    assert after.change_point.tolist() == before.change_point.tolist()
    for name in ("p10", "p50", "p90", "growth_per_day", "level"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name) * k)
    np.testing.assert_array_equal(_days(after), _days(before))
