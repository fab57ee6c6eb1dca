"""Data versions of WhaleFall's samples: one per day of a stats table, and one per quarterly baseline.

A day's version changes whenever a sample of that day is inserted, updated or deleted: it is a
digest of the day's row count, ids, last update time and the sums of every value an aggregation
reads. One GROUP BY over the observed days (the collected_date index and the month partitions
keep it to those days), never a scan of history.

A quarterly baseline is the set of days the next quarter's change fields compare with (WhaleFall's
previous window, compat 3 and Q1: the first two months of a quarter, the whole quarter before a
Q1 or in corrected mode); its version is the digest of its days' versions. Quarters read it as a
second input, so a change in the days a quarter does not compare with leaves that quarter alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date, timedelta

from sqlalchemy import Engine, text

from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, Window, add_months, previous_window, window_containing
from capacity_pipeline.domain.storage.dialects import dialect_of

STATS_TABLES = {Level.DATABASE: "database_size_stats", Level.INSTANCE: "instance_size_stats"}

_DAY_DIGESTS = {
    Level.DATABASE: """
        SELECT collected_date, count(*), sum(id), max(updated_at), sum(size_mb),
               sum(coalesce(data_size_mb, 0)), count(data_size_mb), sum(coalesce(log_size_mb, 0)),
               count(log_size_mb), sum(instance_id), sum({name_hash})
        FROM database_size_stats
        WHERE collected_date BETWEEN :first AND :last
        GROUP BY collected_date""",
    Level.INSTANCE: """
        SELECT collected_date, count(*), sum(id), max(updated_at), sum(total_size_mb), sum(database_count),
               sum(CASE WHEN is_deleted THEN 1 ELSE 0 END), max(deleted_at), sum(instance_id)
        FROM instance_size_stats
        WHERE collected_date BETWEEN :first AND :last
        GROUP BY collected_date""",
}


def observed_days(today: date, days_back: int) -> Window:
    """The days an observation covers: from the first of the month `days_back` days ago to today.
    The start moves a whole month at a time, so a quarterly baseline is either inside or not."""
    return Window((today - timedelta(days=days_back)).replace(day=1), today)


def day_versions(engine: Engine, level: Level, days: Window) -> dict[date, str]:
    """A version for every day of `days` that has samples (a day without samples has none)."""
    sql = _DAY_DIGESTS[level].format(name_hash=dialect_of(engine).text_hash("database_name"))
    with engine.connect() as connection:
        rows = connection.execute(text(sql), {"first": days.start, "last": days.end}).all()
    return {_as_date(row[0]): _digest(row[1:]) for row in rows}


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
    """The days the baselines cover, read once for all of them; None when there are none."""
    if not baselines:
        return None
    return Window(min(w.start for w in baselines.values()), max(w.end for w in baselines.values()))


def baseline_versions(day_versions_: Mapping[date, str], baselines: Mapping[date, Window]) -> dict[date, str]:
    """Quarter start -> digest of the versions of its baseline's days."""
    return {
        start: _digest(
            sorted((day, version) for day, version in day_versions_.items() if window.start <= day <= window.end)
        )
        for start, window in baselines.items()
    }


def _digest(values: object) -> str:
    return hashlib.sha1(repr(values).encode()).hexdigest()[:16]


def _as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
