"""Roll-ups that follow their inputs: when an aggregation partition re-materializes by itself.

A partition reads the days of its window and of its previous window (assets.py maps them), so a
changed day re-aggregates, at every period and both levels, the window containing it and the
window after it, and nothing else. The period in progress follows its samples for days; for weeks,
months and quarters only when CAPACITY_AUTOMATE_CURRENT_PERIODS is on (a partial period changes
with every new day). `capacity_automation` evaluates the conditions and launches the runs, which
show in the run center like any other (task_key capacity_materialize, trigger_source scheduled);
CAPACITY_AUTOMATION=off leaves it stopped, and the UI can start or stop it. While
CAPACITY_AUTOMATION_MAX_QUEUED background runs wait in the run queue it requests nothing (the
change stays pending); a run of it that fails is run again by `capacity_refresh_retries`
(retries.py).
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
from capacity_pipeline.settings import SETTINGS, Settings

DEFAULT_MAX_QUEUED: int = SETTINGS["automation_max_queued"].default
QUEUED_STATUSES = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)


def queued_background_runs(instance: dg.DagsterInstance) -> int:
    """Background runs (automation, its retries, the nightly schedule) waiting in the run queue."""
    filters = dg.RunsFilter(statuses=list(QUEUED_STATUSES), tags={TRIGGER_SOURCE_TAG: c.TRIGGER_SCHEDULED})
    return instance.get_runs_count(filters=filters)


class BackgroundQueueHasRoom(dg.AutomationCondition):
    """True while fewer than `max_queued` background runs wait in the run queue. ANDed after
    `since_last_handled`, a change found while the queue is full stays pending (it was not
    requested, so not handled) and is requested on a later tick, once there is room: delayed,
    never lost. Counted once per asset and tick, so one tick may still add a tick's worth of runs
    to a queue just below the cap."""

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued

    @property
    def name(self) -> str:
        return "background_queue_has_room"

    @property
    def description(self) -> str:
        return f"fewer than {self.max_queued} background runs queued"

    @property
    def requires_cursor(self) -> bool:
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        if context.candidate_subset.is_empty:
            return dg.AutomationResult(context, context.candidate_subset)
        room = queued_background_runs(context.asset_graph_view.instance) < self.max_queued
        return dg.AutomationResult(context, context.candidate_subset if room else context.get_empty_subset())


def aggregation_condition(
    period: PeriodType, *, automate_current_periods: bool, max_queued: int = DEFAULT_MAX_QUEUED
) -> dg.AutomationCondition:
    changed = dg.AutomationCondition.any_deps_updated().since_last_handled()
    condition = changed & ~dg.AutomationCondition.in_progress() & BackgroundQueueHasRoom(max_queued)
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
        # BackgroundQueueHasRoom is our own Python: only the code server can evaluate it, not the daemon.
        use_user_code_server=True,
        description="Re-aggregates the windows whose samples changed (CAPACITY_AUTOMATION switches it on or off).",
    )
