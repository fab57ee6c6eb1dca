"""The two jobs WhaleFall knows: the manual "current period" run and the nightly run.

* `capacity_aggregate_current`: the daily assets at both levels, to launch by hand from the UI for
  the day partition you pick (the Launchpad asks for it). The API's requests do not use it: the
  trigger sensor requests the assets of their scope and period directly, so their runs show as
  `__ASSET_JOB`.
* `calculate_database` (compat 8): the last complete daily, weekly, monthly and quarterly periods at
  both levels, in one run. A run has one partition key, and these four periods are four partitions
  definitions, so the job is an op that runs the engine per period and reports each asset
  partition it wrote as a materialization of that asset. A second op then forecasts as of the day
  the run closes (yesterday) and reports those forecast partitions the same way; it is not part of
  the run-center task (the TaskRun is final before it starts, and its failure does not touch it).
"""

from datetime import date

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.defs.aggregation import checks
from capacity_pipeline.defs.aggregation.assets import aggregation_selection, asset_key
from capacity_pipeline.defs.aggregation.freshness import freshness_evaluation
from capacity_pipeline.defs.aggregation.metadata import failure_description, growth_metadata, report_metadata
from capacity_pipeline.defs.forecast.nightly import forecast_closed_day
from capacity_pipeline.defs.partitions import PartitionsByPeriod, key_for_window
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.hooks import RUN_CENTER_HOOKS
from capacity_pipeline.defs.run_center.step import InstancesFailed, RunCenterStep
from capacity_pipeline.defs.run_center.tags import (
    BACKGROUND_PRIORITY,
    CURRENT_JOB_NAME,
    NIGHTLY_JOB_NAME,
    PRIORITY_TAG,
    TRIGGER_SOURCE_TAG,
    task_of_run,
)
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.aggregation.engine import Batch
from capacity_pipeline.domain.model import AggregationReport, Level, TaskStatus, WindowPlan
from capacity_pipeline.domain.periods import PeriodType, china_today, last_window
from capacity_pipeline.domain.run_center.payloads import (
    NIGHTLY_PHASE,
    nightly_item_result,
    nightly_period_result,
    nightly_summary,
)
from capacity_pipeline.domain.run_center.task_runs import ItemPhase

NIGHTLY_OP_NAME = "aggregate_last_periods"
NIGHTLY_FORECAST_OP_NAME = "forecast_closed_day"

capacity_aggregate_current_job = dg.define_asset_job(
    name=CURRENT_JOB_NAME,
    selection=aggregation_selection((PeriodType.DAILY,)),
    description="Aggregate the daily period you pick (today's, Asia/Shanghai, for the current one) at both levels.",
)


class NightlyConfig(dg.Config):
    """`today` (YYYY-MM-DD, Asia/Shanghai) fixes which periods are "last" (and the day forecast: the
    day before); default: the run's day. The schedule gives both ops the same day."""

    today: str | None = None


def _today(config: NightlyConfig) -> date:
    if not config.today:
        return china_today()
    try:
        return date.fromisoformat(config.today)
    except ValueError:
        raise dg.Failure(description=f"today: {config.today!r} is not a date; expected YYYY-MM-DD") from None


def _calculate_database_op(partitions: PartitionsByPeriod, automate_current_periods: bool) -> dg.OpDefinition:
    @dg.op(name=NIGHTLY_OP_NAME, description="Last complete daily, weekly, monthly and quarterly periods.")
    def calculate_database_op(
        context: dg.OpExecutionContext, config: NightlyConfig, whalefall: WhaleFallDatabase
    ) -> None:
        """Spec 8: per batch of instances (name order), every period at both levels, then the items."""
        today = _today(config)
        task = task_of_run(context.run)
        plans = [
            WindowPlan(period, last_window(period, today), tuple(Level), whalefall.corrected_quarter)
            for period in PeriodType
        ]

        def phase_results(batch: Batch) -> list[ItemPhase]:
            periods: dict[int, dict[PeriodType, dict]] = {instance.id: {} for instance in batch.instances}
            for plan, outcomes in batch.outcomes.items():
                for outcome in outcomes:
                    periods[outcome.instance.id][plan.period] = nightly_period_result(outcome, plan.period, plan.window)
            return [
                ItemPhase(
                    instance.id, NIGHTLY_PHASE, nightly_item_result(instance.id, instance.name, periods[instance.id])
                )
                for instance in batch.instances
            ]

        link = whalefall.run_url(context.run.run_id)
        with RunCenterStep(
            context, whalefall, task, initial_summary=lambda: nightly_summary(extra=link), by_name=True
        ) as step:
            reports = step.aggregate(plans, phase_results, [NIGHTLY_PHASE])
            step.write_summaries(lambda task_run_id: _final_summary(step, task_run_id, reports, link))
        _report_materializations(context, step.engine, reports, partitions, whalefall, automate_current_periods)
        failed = [report for report in reports if report.failures]
        if failed:
            raise InstancesFailed(description="; ".join(failure_description(report) for report in failed))

    return calculate_database_op


def _report_materializations(
    context: dg.OpExecutionContext,
    engine: Engine,
    reports: list[AggregationReport],
    partitions: PartitionsByPeriod,
    whalefall: WhaleFallDatabase,
    automate_current_periods: bool,
) -> None:
    """Each asset partition written without failures shows as a materialization of that asset; its
    checks are evaluated on every partition written, failures or not (as a materialization from any
    other path has them): they look at what is in the table."""
    for report in reports:
        partition_key = key_for_window(report.window)
        if not partitions[report.period_type].has_partition_key(partition_key):
            continue
        for level in Level:
            key = asset_key(level, report.period_type)
            if not report.failures:
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=key,
                        partition=partition_key,
                        metadata={**report_metadata(report, level), **growth_metadata(engine, report, level)},
                    )
                )
            for evaluation in checks.evaluate(engine, key, level, report.period_type, partition_key, checks.CHECKS):
                context.log_event(evaluation)
            # Whether any window of the roll-up is still behind its samples (the nightly run marks those it wrote).
            context.log_event(
                freshness_evaluation(
                    engine, key, level, report.period_type, whalefall, automate_current_periods=automate_current_periods
                )
            )


def _final_summary(step: RunCenterStep, task_run_id: str, reports: list[AggregationReport], link: dict) -> dict:
    """The final summary (compat 6.4): instances by item status, records by level."""
    items = step.center.get_items(task_run_id)
    successful = sum(1 for item in items if item["status"] == TaskStatus.COMPLETED)
    failed = sum(1 for item in items if item["status"] == TaskStatus.FAILED)
    instance_records = sum((item["metrics_json"] or {}).get("aggregated_count", 0) for item in items)
    database_records = sum(report.rows_written(Level.DATABASE) for report in reports)
    return nightly_summary(
        periods_executed=[report.period_type.value for report in reports],
        instances={"total": len(items), "successful": successful, "failed": failed},
        records={
            "instance": instance_records,
            "database": database_records,
            "total": instance_records + database_records,
        },
        extra=link,
    )


def _forecast_closed_day_op(partitions: PartitionsByPeriod) -> dg.OpDefinition:
    @dg.op(
        name=NIGHTLY_FORECAST_OP_NAME,
        description="Forecasts at both levels as of the day the run closes (yesterday).",
        # On an op, the same tag orders the run's steps (the in-process executor runs higher
        # priorities first): after the aggregation, which needs none of it, so the run center's
        # TaskRun is final before the forecasts start.
        tags={PRIORITY_TAG: "-1"},
    )
    def forecast_closed_day_op(
        context: dg.OpExecutionContext, config: NightlyConfig, whalefall: WhaleFallDatabase
    ) -> None:
        closed = last_window(PeriodType.DAILY, _today(config)).start
        forecast_closed_day(context, whalefall, closed, partitions[PeriodType.DAILY])

    return forecast_closed_day_op


def build_nightly_job(partitions: PartitionsByPeriod, *, automate_current_periods: bool = False) -> dg.JobDefinition:
    """WhaleFall's nightly job; a period before the first partition is aggregated but not reported.

    The run-center hooks are the aggregation op's only: the forecasts are not the TaskRun's work.
    """
    calculate_database_op = _calculate_database_op(partitions, automate_current_periods).with_hooks(RUN_CENTER_HOOKS)
    forecast_op = _forecast_closed_day_op(partitions)

    @dg.job(name=NIGHTLY_JOB_NAME, tags={"capacity/job": NIGHTLY_JOB_NAME})
    def calculate_database_job() -> None:
        calculate_database_op()
        forecast_op()

    return calculate_database_job


@dg.schedule(
    name="calculate_database_nightly",
    cron_schedule="0 4 * * *",
    execution_timezone="Asia/Shanghai",
    job_name=NIGHTLY_JOB_NAME,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="WhaleFall's 04:00 aggregation (compat 8). Re-running a period is idempotent, so "
    "every night recomputes the last periods and absorbs late samples.",
)
def calculate_database_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    today = china_today(context.scheduled_execution_time)
    periods = {period: key_for_window(last_window(period, today)) for period in PeriodType}
    return dg.RunRequest(
        run_key=f"{NIGHTLY_JOB_NAME}:{today.isoformat()}",
        run_config=dg.RunConfig(
            ops={op: NightlyConfig(today=today.isoformat()) for op in (NIGHTLY_OP_NAME, NIGHTLY_FORECAST_OP_NAME)}
        ),
        tags={
            TRIGGER_SOURCE_TAG: c.TRIGGER_SCHEDULED,  # background work in the run queue (dagster.yaml)
            PRIORITY_TAG: BACKGROUND_PRIORITY,
            **{f"capacity/{p.value}": key for p, key in periods.items()},
        },
    )
