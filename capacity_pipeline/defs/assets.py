"""The aggregation assets: one per level and period type, partitioned by period window.

Materializing a partition (or a range of them, in a backfill) runs the domain's aggregation
engine for each window at the asset's level. The asset holds no SQL of its own.
"""

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.defs.metadata import (
    failure_description,
    failures_metadata,
    growth_metadata,
    report_metadata,
)
from capacity_pipeline.defs.partitions import PARTITIONS, window_for_key
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.runcenter import StepMirror, levels_of_run, mirrored, scope_of_run
from capacity_pipeline.domain.aggregation import Level, Scope, Status, aggregate_period
from capacity_pipeline.domain.periods import PeriodType, Window, corrected_quarter_from_env

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
        kinds={"sql"},
        description=f"WhaleFall's {level.table} rows for {period.value} periods ({_SPEC_SECTION[level]}).",
    )
    def aggregation(context: dg.AssetExecutionContext, whalefall: WhaleFallDatabase) -> dg.MaterializeResult:
        engine = whalefall.engine()
        mirror = StepMirror(context, engine, whalefall)
        with mirrored(mirror):
            return _materialize(context, engine, whalefall, mirror, level, period)

    return aggregation


def _materialize(
    context: dg.AssetExecutionContext,
    engine: Engine,
    whalefall: WhaleFallDatabase,
    mirror: StepMirror,
    level: Level,
    period: PeriodType,
) -> dg.MaterializeResult:
    """Aggregate each partition of the run at this asset's level, mirrored into the run center."""
    windows = [window_for_key(period, key) for key in context.partition_keys]
    instances = mirror.open_current(period, Window(windows[0].start, windows[-1].end))
    scope = scope_of_run(context.run, levels_of_run(context.run))
    reports = []
    for window in windows:
        report = aggregate_period(
            engine,
            period,
            window,
            scope=Scope(level.value),
            instances=instances,
            batch_size=whalefall.batch_size,
            before_batch=mirror.before_batch,
            checkpoint=mirror.current_checkpoint(level, scope, period, window),
            corrected_quarter=corrected_quarter_from_env(),
        )
        reports.append(report)
        if report.stopped:
            mirror.stop_for_cancel()
    mirror.finish_phase(level, reports)
    failed = [report for report in reports if report.count(Status.FAILED)]
    for report in failed:
        context.log.error(failure_description(report))
    if failed:
        metadata = {**report_metadata(failed[0], level), **failures_metadata(failed[0])}
        raise dg.Failure(description=failure_description(failed[0]), metadata=metadata)
    if len(reports) == 1:
        [report] = reports
        return dg.MaterializeResult(metadata={**report_metadata(report, level), **growth_metadata(engine, report)})
    return dg.MaterializeResult(
        metadata={
            "partitions": dg.MetadataValue.int(len(reports)),
            "window": str(Window(windows[0].start, windows[-1].end)),
            "rows_written": dg.MetadataValue.int(sum(r.rows_written(level) for r in reports)),
            "seconds": dg.MetadataValue.float(round(sum(r.seconds for r in reports), 3)),
        }
    )


AGGREGATION_ASSETS: dict[tuple[Level, PeriodType], dg.AssetsDefinition] = {
    (level, period): _build_asset(level, period) for period in PeriodType for level in Level
}
