"""Today's forecasts follow today's samples: when a forecast partition re-materializes by itself.

Only the partition of today (the latest as-of day) automates: it is remade whenever an observation
finds today's samples of its level changed. Past as-of days stay as they were made (the nightly
run makes yesterday's once more, at 04:00); a first observation, which records every observed day,
therefore launches one run per level, not one per day.

The forecasts have their own sensor, `capacity_forecast_automation`, beside the aggregations'
`capacity_automation`: that one tags its runs as run-center tasks (a TaskRun each), and a forecast
is not one; with separate sensors a forecast never shares a run with an aggregation, so neither
one's failure colours the other's run. CAPACITY_AUTOMATION and CAPACITY_AUTOMATION_SENSOR_SECONDS
switch and pace both.
"""

from __future__ import annotations

import dagster as dg

from capacity_pipeline.defs.run_center.tags import BACKGROUND_PRIORITY, PRIORITY_TAG
from capacity_pipeline.settings import Settings

SENSOR_NAME = "capacity_forecast_automation"


def forecast_condition() -> dg.AutomationCondition:
    # in_latest_time_window first: only today's partition is evaluated further.
    condition = (
        dg.AutomationCondition.in_latest_time_window()
        & dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.in_progress()
    )
    return condition.with_label("today's samples changed")


def build_forecast_automation_sensor(
    settings: Settings, target: dg.AssetSelection
) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        SENSOR_NAME,
        target=target,
        run_tags={PRIORITY_TAG: BACKGROUND_PRIORITY},  # background work in the run queue, no run-center task
        minimum_interval_seconds=settings.automation_sensor_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.automation else dg.DefaultSensorStatus.STOPPED,
        emit_backfills=False,
        description="Re-forecasts today when today's samples change (CAPACITY_AUTOMATION switches it on or off).",
    )
