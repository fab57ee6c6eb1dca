"""Period windows (compat 3), around month, quarter, year and ISO-week boundaries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from capacity_pipeline.domain.periods import (
    PeriodType,
    Window,
    china_today,
    current_window,
    last_window,
    previous_window,
    window_containing,
    windows_fed_by,
)

D = date.fromisoformat


def W(start: str, end: str) -> Window:  # noqa: N802 - reads like the compatibility notes' notation
    return Window(D(start), D(end))


def test_worked_dates_for_thursday_2026_07_02():
    """Spec section 3: today = Thu 2026-07-02."""
    today = D("2026-07-02")
    assert {p: last_window(p, today) for p in PeriodType} == {
        PeriodType.DAILY: W("2026-07-01", "2026-07-01"),
        PeriodType.WEEKLY: W("2026-06-22", "2026-06-28"),
        PeriodType.MONTHLY: W("2026-06-01", "2026-06-30"),
        PeriodType.QUARTERLY: W("2026-04-01", "2026-06-30"),
    }
    assert {p: previous_window(p, last_window(p, today)) for p in PeriodType} == {
        PeriodType.DAILY: W("2026-06-30", "2026-06-30"),
        PeriodType.WEEKLY: W("2026-06-15", "2026-06-21"),
        PeriodType.MONTHLY: W("2026-05-01", "2026-05-31"),
        PeriodType.QUARTERLY: W("2026-01-01", "2026-02-28"),  # compat Q1: only two months
    }


def test_current_windows_may_end_in_the_future():
    today = D("2026-07-02")
    assert current_window(PeriodType.DAILY, today) == W("2026-07-02", "2026-07-02")
    assert current_window(PeriodType.WEEKLY, today) == W("2026-06-29", "2026-07-05")
    assert current_window(PeriodType.MONTHLY, today) == W("2026-07-01", "2026-07-31")
    assert current_window(PeriodType.QUARTERLY, today) == W("2026-07-01", "2026-09-30")


@pytest.mark.parametrize(
    ("today", "period", "expected"),
    [
        # month boundaries, leap February
        ("2028-03-01", PeriodType.DAILY, W("2028-02-29", "2028-02-29")),
        ("2028-03-01", PeriodType.MONTHLY, W("2028-02-01", "2028-02-29")),
        ("2026-03-01", PeriodType.MONTHLY, W("2026-02-01", "2026-02-28")),
        ("2026-05-31", PeriodType.MONTHLY, W("2026-04-01", "2026-04-30")),
        # year boundaries
        ("2026-01-01", PeriodType.DAILY, W("2025-12-31", "2025-12-31")),
        ("2026-01-01", PeriodType.MONTHLY, W("2025-12-01", "2025-12-31")),
        ("2026-01-01", PeriodType.QUARTERLY, W("2025-10-01", "2025-12-31")),
        ("2026-03-31", PeriodType.QUARTERLY, W("2025-10-01", "2025-12-31")),
        # quarter boundaries
        ("2026-04-01", PeriodType.QUARTERLY, W("2026-01-01", "2026-03-31")),
        ("2026-10-01", PeriodType.QUARTERLY, W("2026-07-01", "2026-09-30")),
        ("2026-09-30", PeriodType.QUARTERLY, W("2026-04-01", "2026-06-30")),
        # ISO weeks: 2026-01-01 is a Thursday, so its week started Monday 2025-12-29
        ("2026-01-01", PeriodType.WEEKLY, W("2025-12-22", "2025-12-28")),
        ("2026-01-05", PeriodType.WEEKLY, W("2025-12-29", "2026-01-04")),  # a week across years
        ("2026-01-04", PeriodType.WEEKLY, W("2025-12-22", "2025-12-28")),  # Sunday ends the week
        ("2027-01-04", PeriodType.WEEKLY, W("2026-12-28", "2027-01-03")),
    ],
)
def test_last_window_at_boundaries(today, period, expected):
    assert last_window(period, D(today)) == expected


def test_weeks_start_on_monday_every_day_of_the_week():
    monday = D("2026-06-29")
    for offset in range(7):
        assert window_containing(PeriodType.WEEKLY, monday + timedelta(days=offset)) == W("2026-06-29", "2026-07-05")


@pytest.mark.parametrize(
    ("period", "window", "expected"),
    [
        (PeriodType.DAILY, W("2026-03-01", "2026-03-01"), W("2026-02-28", "2026-02-28")),
        (PeriodType.DAILY, W("2026-01-01", "2026-01-03"), W("2025-12-29", "2025-12-31")),
        (PeriodType.WEEKLY, W("2026-01-05", "2026-01-11"), W("2025-12-29", "2026-01-04")),
        (PeriodType.WEEKLY, W("2026-06-10", "2026-06-11"), W("2026-06-08", "2026-06-09")),
        (PeriodType.MONTHLY, W("2026-01-01", "2026-01-31"), W("2025-12-01", "2025-12-31")),
        (PeriodType.MONTHLY, W("2026-03-01", "2026-03-31"), W("2026-02-01", "2026-02-28")),
        (PeriodType.MONTHLY, W("2028-03-01", "2028-03-31"), W("2028-02-01", "2028-02-29")),
        (PeriodType.QUARTERLY, W("2026-01-01", "2026-03-31"), W("2025-10-01", "2025-12-31")),
        (PeriodType.QUARTERLY, W("2026-04-01", "2026-06-30"), W("2026-01-01", "2026-02-28")),
        (PeriodType.QUARTERLY, W("2028-04-01", "2028-06-30"), W("2028-01-01", "2028-02-29")),
        (PeriodType.QUARTERLY, W("2026-07-01", "2026-09-30"), W("2026-04-01", "2026-05-31")),
        (PeriodType.QUARTERLY, W("2025-10-01", "2025-12-31"), W("2025-07-01", "2025-08-31")),
    ],
)
def test_previous_window_keeps_whalefall_rules(period, window, expected):
    assert previous_window(period, window) == expected


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (W("2026-04-01", "2026-06-30"), W("2026-01-01", "2026-03-31")),
        (W("2026-07-01", "2026-09-30"), W("2026-04-01", "2026-06-30")),
        (W("2025-10-01", "2025-12-31"), W("2025-07-01", "2025-09-30")),
        (W("2026-01-01", "2026-03-31"), W("2025-10-01", "2025-12-31")),
    ],
)
def test_corrected_previous_quarter_covers_three_months(window, expected):
    assert previous_window(PeriodType.QUARTERLY, window, corrected_quarter=True) == expected


def test_today_is_the_shanghai_date_whatever_the_host_zone():
    # 16:30 UTC on 07-01 is already 00:30 on 07-02 in Shanghai (UTC+8).
    assert china_today(datetime(2026, 7, 1, 16, 30, tzinfo=UTC)) == D("2026-07-02")
    assert china_today(datetime(2026, 7, 1, 15, 59, tzinfo=UTC)) == D("2026-07-01")
    new_york = timezone(timedelta(hours=-4))
    assert china_today(datetime(2026, 7, 1, 12, 30, tzinfo=new_york)) == D("2026-07-02")
    with pytest.raises(ValueError, match="timezone-aware"):
        china_today(datetime(2026, 7, 1, 12, 0))


def test_window_bounds_are_inclusive_and_ordered():
    assert W("2026-06-01", "2026-06-30").days == 30
    with pytest.raises(ValueError, match="after its end"):
        W("2026-06-02", "2026-06-01")


@pytest.mark.parametrize(
    ("period", "day", "corrected", "fed"),
    [
        (PeriodType.DAILY, "2026-03-31", False, [W("2026-03-31", "2026-03-31"), W("2026-04-01", "2026-04-01")]),
        (PeriodType.WEEKLY, "2026-03-29", False, [W("2026-03-23", "2026-03-29"), W("2026-03-30", "2026-04-05")]),
        (PeriodType.MONTHLY, "2026-02-28", False, [W("2026-02-01", "2026-02-28"), W("2026-03-01", "2026-03-31")]),
        # compat Q1: Q2 compares with Jan-Feb only, so a March day feeds Q1 alone ...
        (PeriodType.QUARTERLY, "2026-03-15", False, [W("2026-01-01", "2026-03-31")]),
        (PeriodType.QUARTERLY, "2026-02-15", False, [W("2026-01-01", "2026-03-31"), W("2026-04-01", "2026-06-30")]),
        # ... except in corrected mode, and before a Q1, which compares with the whole Q4.
        (PeriodType.QUARTERLY, "2026-03-15", True, [W("2026-01-01", "2026-03-31"), W("2026-04-01", "2026-06-30")]),
        (PeriodType.QUARTERLY, "2025-12-15", False, [W("2025-10-01", "2025-12-31"), W("2026-01-01", "2026-03-31")]),
    ],
)
def test_the_windows_a_day_feeds_are_its_own_and_the_one_comparing_with_it(period, day, corrected, fed):
    assert windows_fed_by(period, D(day), corrected_quarter=corrected) == fed
