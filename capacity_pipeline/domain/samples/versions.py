"""The days an observation of the samples covers, and the quarterly baselines inside them.

A quarterly baseline is the set of days the next quarter's change fields compare with (WhaleFall's
previous window, compat 3 and Q1: the first two months of a quarter, the whole quarter before a
Q1 or in corrected mode). Quarters read it as a second input, so a change in the days a quarter
does not compare with leaves that quarter alone. What changed on those days is in the change log
(changes.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta

from capacity_pipeline.domain.periods import PeriodType, Window, add_months, previous_window, window_containing


def observed_days(today: date, days_back: int) -> Window:
    """The days an observation covers: from the first of the month `days_back` days ago to today.
    The start moves a whole month at a time, so a quarterly baseline is either inside or not."""
    return Window((today - timedelta(days=days_back)).replace(day=1), today)


def quarterly_baselines(days: Window, *, corrected_quarter: bool) -> dict[date, Window]:
    """Quarter start -> the quarter's baseline window, for the baselines inside the observed days
    whose next quarter has begun: a quarter not begun is not aggregated, so nothing reads its
    baseline yet (and a baseline whose next quarter has begun is complete)."""
    baselines = {}
    quarter = window_containing(PeriodType.QUARTERLY, add_months(days.start, -3))
    while quarter.start <= days.end:
        following = window_containing(PeriodType.QUARTERLY, quarter.end + timedelta(days=1))
        baseline = previous_window(PeriodType.QUARTERLY, following, corrected_quarter=corrected_quarter)
        if days.start <= baseline.start <= days.end and following.start <= days.end:
            baselines[quarter.start] = baseline
        quarter = following
    return baselines


def baseline_days(baselines: Mapping[date, Window]) -> Window | None:
    """The days the baselines cover; None when there are none."""
    if not baselines:
        return None
    return Window(min(w.start for w in baselines.values()), max(w.end for w in baselines.values()))
