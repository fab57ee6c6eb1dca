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
from sqlalchemy import Engine

from capacity_pipeline.defs.assets import AGGREGATION_ASSETS, asset_key
from capacity_pipeline.defs.metadata import failure_description, growth_metadata, report_metadata
from capacity_pipeline.defs.partitions import PARTITIONS, key_for_window
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.runcenter import StepMirror, dagster_link, mirrored
from capacity_pipeline.domain.aggregation import AggregationReport, Level, Status, aggregate_period
from capacity_pipeline.domain.periods import PeriodType, china_today, corrected_quarter_from_env, last_window
from capacity_pipeline.domain.runcenter import ItemOutcome
from capacity_pipeline.domain.taskrun_payloads import (
    nightly_item_payload,
    nightly_period_result,
    nightly_summary,
)

CURRENT_JOB_NAME = "capacity_aggregate_current"
NIGHTLY_JOB_NAME = "calculate_database"
NIGHTLY_OP_NAME = "aggregate_last_periods"

capacity_aggregate_current_job = dg.define_asset_job(
    name=CURRENT_JOB_NAME,
    selection=dg.AssetSelection.assets(*(AGGREGATION_ASSETS[level, PeriodType.DAILY] for level in Level)),
    description="Aggregate today's daily period (Asia/Shanghai) at the selected levels.",
    # One process, steps in order (database level, then instance level, as WhaleFall runs them).
    executor_def=dg.in_process_executor,
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


@dg.op(name=NIGHTLY_OP_NAME, description="Last complete daily, weekly, monthly and quarterly periods.")
def calculate_database_op(context: dg.OpExecutionContext, config: NightlyConfig, whalefall: WhaleFallDatabase) -> None:
    today = _today(config)
    engine = whalefall.engine()
    mirror = StepMirror(context, engine, whalefall)
    with mirrored(mirror):
        _run_nightly(context, engine, whalefall, mirror, today)


def _run_nightly(
    context: dg.OpExecutionContext,
    engine: Engine,
    whalefall: WhaleFallDatabase,
    mirror: StepMirror,
    today: date,
) -> None:
    """Spec 8, per batch of instances (name order): every period at both levels, then the items."""
    instances = mirror.open_nightly()
    windows = {period: last_window(period, today) for period in PeriodType}
    reports: dict[PeriodType, list[AggregationReport]] = {period: [] for period in PeriodType}
    batches = [instances[i : i + whalefall.batch_size] for i in range(0, len(instances), whalefall.batch_size)]
    for number, batch in enumerate(batches, start=1):
        mirror.before_batch(batch)
        results: dict[int, dict[PeriodType, dict]] = {instance.id: {} for instance in batch}
        for period, window in windows.items():
            report = aggregate_period(
                engine,
                period,
                window,
                instances=batch,
                batch_size=len(batch),
                corrected_quarter=corrected_quarter_from_env(),
            )
            reports[period].append(report)
            for outcome in report.outcomes:
                results[outcome.instance.id][period] = nightly_period_result(outcome, period, window)
        outcomes = [
            ItemOutcome(instance.id, *nightly_item_payload(instance.id, instance.name, results[instance.id]))
            for instance in batch
        ]
        if not mirror.after_batch(outcomes, f"nightly: batch {number}/{len(batches)}"):
            mirror.stop_for_cancel()
    merged = {period: AggregationReport.merge(r) for period, r in reports.items() if r}
    _report_materializations(context, engine, merged)
    _finalize_nightly(mirror, instances, merged)
    failed = [report for report in merged.values() if report.count(Status.FAILED)]
    if failed:
        raise dg.Failure(description="; ".join(failure_description(report) for report in failed))


def _report_materializations(
    context: dg.OpExecutionContext, engine: Engine, reports: dict[PeriodType, AggregationReport]
) -> None:
    """Each asset partition written without failures shows as a materialization of that asset."""
    for period, report in reports.items():
        partition_key = key_for_window(report.window)
        if report.count(Status.FAILED) or not PARTITIONS[period].has_partition_key(partition_key):
            continue
        growth = growth_metadata(engine, report)
        for level in Level:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=asset_key(level, period),
                    partition=partition_key,
                    metadata={**report_metadata(report, level), **growth},
                )
            )


def _finalize_nightly(mirror: StepMirror, instances: list, reports: dict[PeriodType, AggregationReport]) -> None:
    """The final summary (spec 6.4): instances by item status, records by level."""
    items = mirror.center.get_items(mirror.task_run_id)
    successful = sum(1 for item in items if item["status"] == "completed")
    failed = sum(1 for item in items if item["status"] == "failed")
    instance_records = sum((item["metrics_json"] or {}).get("aggregated_count", 0) for item in items)
    database_records = sum(report.rows_written(Level.DATABASE) for report in reports.values())
    summary = nightly_summary(
        periods_executed=[period.value for period in reports],
        instances={"total": len(instances), "successful": successful, "failed": failed},
        records={
            "instance": instance_records,
            "database": database_records,
            "total": instance_records + database_records,
        },
        extra=dagster_link(mirror.context.run.run_id),
    )
    mirror.center.finalize_run(mirror.task_run_id, summary)


@dg.job(name=NIGHTLY_JOB_NAME, tags={"capacity/job": NIGHTLY_JOB_NAME}, executor_def=dg.in_process_executor)
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
