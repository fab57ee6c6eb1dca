"""When an aggregation partition re-materializes by itself: when a sample it reads changed.

A partition reads the days of its window and of its previous window (assets.py maps them), so a
changed day re-aggregates, at every period and both levels, the window containing it and the
window after it, and nothing else. The period in progress follows its samples for days; for weeks,
months and quarters only when CAPACITY_AUTOMATE_CURRENT_PERIODS is on (a partial period changes
with every new day).
"""

from __future__ import annotations

import dagster as dg

from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.settings import read_setting


def aggregation_condition(period: PeriodType) -> dg.AutomationCondition:
    changed = dg.AutomationCondition.any_deps_updated().since_last_handled()
    condition = changed & ~dg.AutomationCondition.in_progress()
    if period is not PeriodType.DAILY and not read_setting("automate_current_periods"):
        condition = condition & ~dg.AutomationCondition.in_latest_time_window()
    return condition.with_label("a sample it reads changed")
