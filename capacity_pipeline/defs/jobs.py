"""The two jobs WhaleFall knows: the manual "current period" run and the nightly run.

* `capacity_aggregate_current`: today's daily partition of the daily assets; a launcher picks the
  database level, the instance level or both through the run's asset selection.
* `calculate_database` (spec 8): the last complete daily, weekly, monthly and quarterly periods at
  both levels, in one run. A run has one partition key, and these four periods are four partitions
  definitions, so the job is an op that runs the engine per period and reports each asset
  partition it wrote as a materialization of that asset.
"""

from datetime import date

import dagster as dg

from capacity_pipeline.defs.assets import AGGREGATION_ASSETS, asset_key, progress_logger
from capacity_pipeline.defs.metadata import (
    failure_description,
    failures_metadata,
    growth_metadata,
    report_metadata,
)
from capacity_pipeline.defs.partitions import PARTITIONS, key_for_window
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain.aggregation import Level, Scope, Status, aggregate_period
from capacity_pipeline.domain.periods import PeriodType, china_today, corrected_quarter_from_env, last_window

CURRENT_JOB_NAME = "capacity_aggregate_current"
NIGHTLY_JOB_NAME = "calculate_database"
NIGHTLY_OP_NAME = "aggregate_last_periods"

capacity_aggregate_current_job = dg.define_asset_job(
    name=CURRENT_JOB_NAME,
    selection=dg.AssetSelection.assets(*(AGGREGATION_ASSETS[level, PeriodType.DAILY] for level in Level)),
    description="Aggregate today's daily period (Asia/Shanghai) at the selected levels.",
)


class NightlyConfig(dg.Config):
    """`today` (YYYY-MM-DD, Asia/Shanghai) fixes which periods are "last"; default: the run's day."""

    today: str | None = None


def _today(config: NightlyConfig) -> date:
    if not config.today:
        return china_today()
    try:
        return date.fromisoformat(config.today)
    except ValueError:
        raise dg.Failure(description=f"today: {config.today!r} is not a date; expected YYYY-MM-DD") from None


@dg.op(
    name=NIGHTLY_OP_NAME,
    description="Last complete daily, weekly, monthly and quarterly periods, both levels.",
)
def calculate_database_op(
    context: dg.OpExecutionContext, config: NightlyConfig, whalefall: WhaleFallDatabase
) -> None:
    today = _today(config)
    engine = whalefall.engine()
    failed = []
    for period in PeriodType:
        window = last_window(period, today)
        report = aggregate_period(
            engine,
            period,
            window,
            scope=Scope.ALL,
            checkpoint=progress_logger(context, period.value),
            corrected_quarter=corrected_quarter_from_env(),
        )
        if report.count(Status.FAILED):
            context.log.error(failure_description(report))
            failed.append(report)
            continue
        partition_key = key_for_window(window)
        if not PARTITIONS[period].has_partition_key(partition_key):
            context.log.warning(f"{period.value} {window} is before the first partition; not reported")
            continue
        growth = growth_metadata(engine, report)
        for level in Level:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=asset_key(level, period),
                    partition=partition_key,
                    metadata={**report_metadata(report, level), **failures_metadata(report), **growth},
                )
            )
    if failed:
        raise dg.Failure(description="; ".join(failure_description(report) for report in failed))


@dg.job(name=NIGHTLY_JOB_NAME, tags={"capacity/job": NIGHTLY_JOB_NAME})
def calculate_database_job() -> None:
    calculate_database_op()


@dg.schedule(
    name="calculate_database_nightly",
    cron_schedule="0 4 * * *",
    execution_timezone="Asia/Shanghai",
    job=calculate_database_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="WhaleFall's 04:00 aggregation (spec 8). Re-running a period is idempotent, so "
    "every night recomputes the last periods and absorbs late samples.",
)
def calculate_database_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    today = china_today(context.scheduled_execution_time)
    periods = {period: key_for_window(last_window(period, today)) for period in PeriodType}
    return dg.RunRequest(
        run_key=f"{NIGHTLY_JOB_NAME}:{today.isoformat()}",
        run_config=dg.RunConfig(ops={NIGHTLY_OP_NAME: NightlyConfig(today=today.isoformat())}),
        tags={"capacity/trigger": "scheduled", **{f"capacity/{p.value}": key for p, key in periods.items()}},
    )
