"""One Dagster partitions definition per WhaleFall period type: a partition is one period window.

Weeks start on Monday, quarters on Jan/Apr/Jul/Oct 1, all in Asia/Shanghai. Every period type
includes the period in progress (today, this week, this month, this quarter): the API's "current
period" runs it, and the nightly run takes the last complete one. The first partition is the
setting CAPACITY_PARTITIONS_START, moved back to the start of its period; `partitions_by_period`
builds the four definitions from it when the definitions are built.
"""

from __future__ import annotations

from datetime import date
from functools import cache

import dagster as dg

from capacity_pipeline.domain.periods import PeriodType, Window, window_containing

TIMEZONE = "Asia/Shanghai"
KEY_FORMAT = "%Y-%m-%d"

PartitionsByPeriod = dict[PeriodType, dg.TimeWindowPartitionsDefinition]


def build_partitions(period: PeriodType, start: date) -> dg.TimeWindowPartitionsDefinition:
    first = window_containing(period, start).start.isoformat()
    if period is PeriodType.DAILY:
        return dg.DailyPartitionsDefinition(start_date=first, timezone=TIMEZONE, end_offset=1)
    if period is PeriodType.WEEKLY:
        return dg.WeeklyPartitionsDefinition(start_date=first, timezone=TIMEZONE, day_offset=1, end_offset=1)
    if period is PeriodType.MONTHLY:
        return dg.MonthlyPartitionsDefinition(start_date=first, timezone=TIMEZONE, end_offset=1)
    # Dagster has no quarterly class: quarters start on Jan/Apr/Jul/Oct 1.
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 0 1 1,4,7,10 *", start=first, fmt=KEY_FORMAT, timezone=TIMEZONE, end_offset=1
    )


@cache
def partitions_by_period(start: date) -> PartitionsByPeriod:
    """The four partitions definitions from one first day (the same objects for the same day)."""
    return {period: build_partitions(period, start) for period in PeriodType}


def window_for_key(period: PeriodType, partition_key: str) -> Window:
    """The WhaleFall window (inclusive dates) of a partition: the period that starts on its key."""
    window = window_containing(period, date.fromisoformat(partition_key))
    if key_for_window(window) != partition_key:
        raise ValueError(f"{partition_key} is not the first day of a {period.value} period")
    return window


def key_for_window(window: Window) -> str:
    """A partition's key is the first day of its window."""
    return window.start.strftime(KEY_FORMAT)
