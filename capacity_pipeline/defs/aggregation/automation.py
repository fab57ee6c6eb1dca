"""Roll-ups that follow their inputs: when an aggregation partition re-materializes by itself.

A partition reads the days of its window and of its previous window (assets.py maps them), so a
changed day re-aggregates, at every period and both levels, the window containing it and the
window after it, and nothing else. The period in progress follows its samples for days; for weeks,
months and quarters only when CAPACITY_AUTOMATE_CURRENT_PERIODS is on (a partial period changes
with every new day). `capacity_automation` evaluates the conditions and launches the runs, which
show in the run center like any other (task_key capacity_materialize, trigger_source scheduled);
CAPACITY_AUTOMATION=off leaves it stopped, and the UI can start or stop it.
"""

from __future__ import annotations

import dagster as dg

from capacity_pipeline.defs.run_center.tags import (
    BACKGROUND_PRIORITY,
    PRIORITY_TAG,
    REFRESH_CHANGED,
    REFRESH_TAG,
    TASK_KEY_TAG,
    TRIGGER_SOURCE_TAG,
)
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.settings import Settings


def aggregation_condition(period: PeriodType, *, automate_current_periods: bool) -> dg.AutomationCondition:
    changed = dg.AutomationCondition.any_deps_updated().since_last_handled()
    condition = changed & ~dg.AutomationCondition.in_progress()
    if period is not PeriodType.DAILY and not automate_current_periods:
        condition = condition & ~dg.AutomationCondition.in_latest_time_window()
    return condition.with_label("a sample it reads changed")


def automation_run_tags() -> dict[str, str]:
    """The tags of every automated re-aggregation, its retries' included: a scheduled
    capacity_materialize task in the run center, background work in the run queue (dagster.yaml:
    its own slots, behind a person's runs), a refresh of what changed."""
    return {
        TASK_KEY_TAG: c.MATERIALIZE_TASK_KEY,
        TRIGGER_SOURCE_TAG: c.TRIGGER_SCHEDULED,
        PRIORITY_TAG: BACKGROUND_PRIORITY,
        REFRESH_TAG: REFRESH_CHANGED,
    }


def build_automation_sensor(settings: Settings, target: dg.AssetSelection) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "capacity_automation",
        target=target,
        run_tags=automation_run_tags(),
        minimum_interval_seconds=settings.automation_sensor_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.automation else dg.DefaultSensorStatus.STOPPED,
        emit_backfills=False,  # one run per partition: one TaskRun per window in the run center
        description="Re-aggregates the windows whose samples changed (CAPACITY_AUTOMATION switches it on or off).",
    )
