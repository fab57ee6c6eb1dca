"""Roll-ups that follow their inputs: the samples are observed on a schedule, and Dagster's declarative
automation re-materializes exactly the partitions whose samples changed (automation_conditions.py).

* `observe_capacity_samples` and `observe_quarterly_baselines` (jobs; one partitions definition
  each) observe the sample sources; their schedules run them every CAPACITY_OBSERVE_MINUTES
  (default 10), and the UI's "Observe sources" runs them by hand.
* `capacity_automation` (sensor) evaluates the aggregation assets' automation conditions and
  launches their runs, which show in the run center like any other (task_key capacity_materialize,
  trigger_source scheduled). CAPACITY_AUTOMATION=off leaves it stopped; the UI can start or stop it.
"""

from __future__ import annotations

import dagster as dg

from capacity_pipeline.defs.assets import AGGREGATION_ASSETS
from capacity_pipeline.defs.run_center_mirror import TASK_KEY_TAG, TRIGGER_SOURCE_TAG
from capacity_pipeline.defs.sources import BASELINE_SOURCES, STATS_SOURCES
from capacity_pipeline.domain import constants as c
from capacity_pipeline.settings import read_setting


def _observation(name: str, sources: list, what: str) -> tuple[dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition]:
    """A job observing `sources` (one partitions definition per job) and its schedule."""
    job = dg.define_asset_job(name, selection=dg.AssetSelection.assets(*(s.key for s in sources)), description=what)
    schedule = dg.ScheduleDefinition(
        name=f"{name}_schedule",
        job=job,
        cron_schedule=f"*/{read_setting('observe_minutes')} * * * *",
        execution_timezone="Asia/Shanghai",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="How the automation learns that samples changed (CAPACITY_OBSERVE_MINUTES).",
    )
    return job, schedule


observe_capacity_samples, observe_capacity_samples_schedule = _observation(
    "observe_capacity_samples",
    list(STATS_SOURCES.values()),
    "Observe database_size_stats and instance_size_stats: a new data version for every changed day.",
)
observe_quarterly_baselines, observe_quarterly_baselines_schedule = _observation(
    "observe_quarterly_baselines",
    list(BASELINE_SOURCES.values()),
    "Observe the days each quarter compares with: a new data version for every changed quarterly baseline.",
)
OBSERVATION_JOBS = [observe_capacity_samples, observe_quarterly_baselines]
OBSERVATION_SCHEDULES = [observe_capacity_samples_schedule, observe_quarterly_baselines_schedule]

capacity_automation = dg.AutomationConditionSensorDefinition(
    "capacity_automation",
    target=dg.AssetSelection.assets(*AGGREGATION_ASSETS.values()),
    run_tags={TASK_KEY_TAG: c.MATERIALIZE_TASK_KEY, TRIGGER_SOURCE_TAG: c.TRIGGER_SCHEDULED},
    minimum_interval_seconds=read_setting("automation_sensor_seconds"),
    default_status=dg.DefaultSensorStatus.RUNNING if read_setting("automation") else dg.DefaultSensorStatus.STOPPED,
    emit_backfills=False,  # one run per partition: one TaskRun per window in the run center
    description="Re-aggregates the windows whose samples changed (CAPACITY_AUTOMATION switches it on or off).",
)
