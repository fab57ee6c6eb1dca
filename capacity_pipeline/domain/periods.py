"""WhaleFall's period arithmetic (compat 3).

Windows are inclusive on both ends, weeks start on Monday, and "today" is the Asia/Shanghai date
whatever the host time zone. The previous quarter keeps WhaleFall's two-month quirk (compat Q1)
unless the caller asks for the corrected one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

CHINA_TZ = ZoneInfo("Asia/Shanghai")


class PeriodType(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"


@dataclass(frozen=True, order=True)
class Window:
    """An inclusive date window [start, end]."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(f"window start {self.start} is after its end {self.end}")

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def __contains__(self, day: date) -> bool:
        return self.start <= day <= self.end


def china_today(now: datetime | None = None) -> date:
    """WhaleFall's "today": the calendar date in Asia/Shanghai (compat 3)."""
    moment = now if now is not None else datetime.now(CHINA_TZ)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return moment.astimezone(CHINA_TZ).date()


def add_months(first_of_month: date, months: int) -> date:
    """The first day of the month `months` after (or before) the month of `first_of_month`."""
    index = first_of_month.year * 12 + (first_of_month.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def months_between(first: date, last: date) -> list[date]:
    """First days of every month touched by [first, last]."""
    months, month = [], first.replace(day=1)
    while month <= last:
        months.append(month)
        month = add_months(month, 1)
    return months


def _quarter_start(day: date) -> date:
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def window_containing(period: PeriodType, day: date) -> Window:
    """The period of this type that contains `day` (WhaleFall's current period when day is today)."""
    if period is PeriodType.DAILY:
        return Window(day, day)
    if period is PeriodType.WEEKLY:
        monday = day - timedelta(days=day.weekday())
        return Window(monday, monday + timedelta(days=6))
    if period is PeriodType.MONTHLY:
        start = day.replace(day=1)
        return Window(start, add_months(start, 1) - timedelta(days=1))
    start = _quarter_start(day)
    return Window(start, add_months(start, 3) - timedelta(days=1))


def current_window(period: PeriodType, today: date) -> Window:
    """`get_current_period`: the period containing today (a week or month may end in the future)."""
    return window_containing(period, today)


def last_window(period: PeriodType, today: date) -> Window:
    """`get_last_period`: the last complete period before the one containing today."""
    current = window_containing(period, today)
    return window_containing(period, current.start - timedelta(days=1))


def previous_window(period: PeriodType, window: Window, *, corrected_quarter: bool = False) -> Window:
    """`get_previous_period`: the window the change metrics compare against."""
    if period in (PeriodType.DAILY, PeriodType.WEEKLY):
        # Same length, ending the day before; for a one-day window that is simply the day before.
        end = window.start - timedelta(days=1)
        return Window(end - (window.end - window.start), end)
    if period is PeriodType.MONTHLY:
        start = add_months(window.start.replace(day=1), -1)
        return Window(start, add_months(start, 1) - timedelta(days=1))
    previous_start = add_months(_quarter_start(window.start), -3)
    if corrected_quarter or window.start.month <= 3:
        return Window(previous_start, add_months(previous_start, 3) - timedelta(days=1))
    # compat Q1: outside Q1 WhaleFall ends the previous quarter the day before its third month.
    return Window(previous_start, add_months(previous_start, 2) - timedelta(days=1))


def windows_fed_by(period: PeriodType, day: date, *, corrected_quarter: bool = False) -> list[Window]:
    """The windows whose aggregation reads `day`: the one containing it, and the one after it when
    that one's previous window (what its change fields compare with) contains the day."""
    containing = window_containing(period, day)
    following = window_containing(period, containing.end + timedelta(days=1))
    compared = previous_window(period, following, corrected_quarter=corrected_quarter)
    return [containing, following] if compared.start <= day <= compared.end else [containing]


def windows_fed_by_days(period: PeriodType, days: Iterable[date], *, corrected_quarter: bool = False) -> list[Window]:
    """Every window of `period` whose aggregation reads one of `days`, in start order."""
    windows = {w for day in set(days) for w in windows_fed_by(period, day, corrected_quarter=corrected_quarter)}
    return sorted(windows, key=lambda window: window.start)


def refreshed_automatically(period: PeriodType, window: Window, *, today: date, current_periods: bool) -> bool:
    """Whether the automation re-aggregates the window when its samples change: begun, and in
    progress only for days or with CAPACITY_AUTOMATE_CURRENT_PERIODS (a partial week, month or
    quarter is otherwise aggregated once complete)."""
    if window.start > today:
        return False
    return window.end < today or period is PeriodType.DAILY or current_periods
