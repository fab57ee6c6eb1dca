"""The automation's re-aggregation done in the domain: every window a changed day feeds, one level
at a time, each for the instances changed since the window's mark (refresh.py).

This is what the roll-ups' automation runs (one run per level and window, as each asset's
condition fires: `plan_refresh`, then `aggregate_windows` over the changed instances), without
Dagster and the run center around it; the refresh tests and the freshness bench share it. It
lives apart from refresh.py because the engine already imports refresh.py (to record marks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine

from capacity_pipeline.domain.aggregation.engine import aggregate_windows
from capacity_pipeline.domain.aggregation.refresh import Refresh, plan_refresh
from capacity_pipeline.domain.model import AggregationReport, Level, WindowPlan
from capacity_pipeline.domain.periods import PeriodType, Window, windows_fed_by_days
from capacity_pipeline.domain.samples.instances import list_active_instances


@dataclass(frozen=True)
class WindowRefresh:
    """One window's refresh at one level and what it wrote."""

    level: Level
    refresh: Refresh
    report: AggregationReport

    @property
    def instance_ids(self) -> frozenset[int] | None:
        """The instances re-aggregated; None: all of them (the window had no mark)."""
        return self.refresh.instance_ids_at(self.level)


def fed_windows(
    days: Iterable[date],
    *,
    corrected_quarter: bool = False,
    include: Callable[[PeriodType, Window], bool] | None = None,
) -> list[tuple[PeriodType, Window]]:
    """Every (period, window) whose aggregation reads one of `days`, in period and start order;
    `include` leaves out the windows the automation does not run (e.g. a period in progress)."""
    days = list(days)
    return [
        (period, window)
        for period in PeriodType
        for window in windows_fed_by_days(period, days, corrected_quarter=corrected_quarter)
        if include is None or include(period, window)
    ]


def refresh_fed_windows(
    engine: Engine,
    level: Level,
    days: Iterable[date],
    *,
    corrected_quarter: bool = False,
    include: Callable[[PeriodType, Window], bool] | None = None,
) -> list[WindowRefresh]:
    """Refresh, at `level`, every window `days` feed: each for the instances changed since its
    mark, moving the mark on (a window without one is re-aggregated whole)."""
    done = []
    active = list_active_instances(engine)
    for period, window in fed_windows(days, corrected_quarter=corrected_quarter, include=include):
        plan = WindowPlan(period, window, (level,), corrected_quarter)
        refresh = plan_refresh(engine, plan)
        ids = refresh.instance_ids_at(level)
        instances = active if ids is None else [i for i in active if i.id in ids]
        [report] = aggregate_windows(engine, [plan], instances=instances, changes_through=refresh.through)
        done.append(WindowRefresh(level, refresh, report))
    return done
