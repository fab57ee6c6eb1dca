"""The aggregation assets: one per level and period type, partitioned by period window.

Materializing a partition (or a range of them, in a backfill) runs the domain's engine for each
window at the asset's level, mirrored into the run center (run_center_mirror). The asset holds
no SQL of its own.
"""

import dagster as dg

from capacity_pipeline.defs.metadata import failure_description, failures_metadata, growth_metadata, report_metadata
from capacity_pipeline.defs.partitions import PARTITIONS, window_for_key
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center_mirror import (
    RUN_CENTER_HOOKS,
    InstancesFailed,
    RunCenterStep,
    current_initial_summary,
    task_of_run,
)
from capacity_pipeline.domain.engine import Batch
from capacity_pipeline.domain.model import AggregationReport, Level, WindowPlan, merge_outcomes
from capacity_pipeline.domain.periods import PeriodType, Window
from capacity_pipeline.domain.run_center import ItemPhase
from capacity_pipeline.domain.run_center_payloads import current_phase_result, current_summary

GROUP = "capacity"
_SPEC_SECTION = {Level.DATABASE: "spec 4.1", Level.INSTANCE: "spec 4.2"}

# How many partitions one backfill run takes: each is one set-based pass, so runs stay short.
_PARTITIONS_PER_BACKFILL_RUN = {
    PeriodType.DAILY: 31,
    PeriodType.WEEKLY: 13,
    PeriodType.MONTHLY: 6,
    PeriodType.QUARTERLY: 2,
}


def asset_key(level: Level, period: PeriodType) -> dg.AssetKey:
    return dg.AssetKey(f"{period.value}_{level.table}")


def _build_asset(level: Level, period: PeriodType) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(level, period),
        group_name=GROUP,
        partitions_def=PARTITIONS[period],
        backfill_policy=dg.BackfillPolicy.multi_run(_PARTITIONS_PER_BACKFILL_RUN[period]),
        hooks=RUN_CENTER_HOOKS,
        kinds={"sql"},
        description=f"WhaleFall's {level.table} rows for {period.value} periods ({_SPEC_SECTION[level]}).",
    )
    def aggregation(context: dg.AssetExecutionContext, whalefall: WhaleFallDatabase) -> dg.MaterializeResult:
        return _materialize(context, whalefall, level, period)

    return aggregation


def _materialize(
    context: dg.AssetExecutionContext, whalefall: WhaleFallDatabase, level: Level, period: PeriodType
) -> dg.MaterializeResult:
    """Aggregate each partition of the run at this asset's level, mirrored into the run center."""
    task = task_of_run(context.run)
    windows = [window_for_key(period, key) for key in context.partition_keys]
    span = Window(windows[0].start, windows[-1].end)
    plans = [WindowPlan(period, window, (level,), whalefall.corrected_quarter) for window in windows]

    def phase_results(batch: Batch) -> list[ItemPhase]:
        """One result per instance for this level over all the run's windows (spec 6.2 payloads)."""
        merged = merge_outcomes(batch.outcomes.values())
        return [
            ItemPhase(instance_id, level.value, current_phase_result(outcome, level, task.scope, period, span))
            for instance_id, outcome in merged.items()
        ]

    with RunCenterStep(
        context.op_execution_context, whalefall, task, initial_summary=lambda: current_initial_summary(task)
    ) as step:
        step.write_summaries(
            lambda _: current_summary(
                task.task_key,
                task.scope,
                period_type=period,
                requested_period_type=task.requested_period_type,
                window=span,
                extra=whalefall.run_url(context.run.run_id),
            )
        )
        reports = step.aggregate(plans, phase_results, [phase.value for phase in task.scope.levels])
    return _result(context, step, reports, level)


def _result(
    context: dg.AssetExecutionContext, step: RunCenterStep, reports: list[AggregationReport], level: Level
) -> dg.MaterializeResult:
    failed = [report for report in reports if report.failures]
    for report in failed:
        context.log.error(failure_description(report))
    if failed:
        metadata = {**report_metadata(failed[0], level), **failures_metadata(failed[0])}
        raise InstancesFailed(description=failure_description(failed[0]), metadata=metadata)
    if len(reports) == 1:
        [report] = reports
        return dg.MaterializeResult(
            metadata={**report_metadata(report, level), **growth_metadata(step.engine, report, level)}
        )
    return dg.MaterializeResult(
        metadata={
            "partitions": dg.MetadataValue.int(len(reports)),
            "window": str(Window(reports[0].window.start, reports[-1].window.end)),
            "rows_written": dg.MetadataValue.int(sum(r.rows_written(level) for r in reports)),
            "seconds": dg.MetadataValue.float(round(max(r.seconds for r in reports), 3)),
        }
    )


AGGREGATION_ASSETS: dict[tuple[Level, PeriodType], dg.AssetsDefinition] = {
    (level, period): _build_asset(level, period) for period in PeriodType for level in Level
}
