"""The aggregation assets: one per level and period type, partitioned by period window.

Materializing a partition (or a range of them, in a backfill) runs the domain's aggregation
engine for each window at the asset's level. The asset holds no SQL of its own.
"""

import dagster as dg

from capacity_pipeline.defs.metadata import (
    failure_description,
    failures_metadata,
    growth_metadata,
    report_metadata,
)
from capacity_pipeline.defs.partitions import PARTITIONS, window_for_key
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain.aggregation import AggregationReport, Level, Scope, Status, aggregate_period
from capacity_pipeline.domain.periods import PeriodType, corrected_quarter_from_env

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


def progress_logger(context: dg.OpExecutionContext, label: str):  # noqa: ANN201 - a Checkpoint
    """A checkpoint that reports each finished batch in the run's log."""

    def checkpoint(report: AggregationReport, batch) -> bool:  # noqa: ANN001
        done = len(report.outcomes)
        context.log.info(
            f"{label} {report.window}: batch {report.batches_done}/{report.batches_total} done, "
            f"{done}/{report.instances_total} instances"
        )
        return True

    return checkpoint


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
        label = f"{period.value} {level.value}"
        results, failed = {}, []
        for partition_key in context.partition_keys:
            report = aggregate_period(
                engine,
                period,
                window_for_key(period, partition_key),
                scope=Scope(level.value),
                checkpoint=progress_logger(context, label),
                corrected_quarter=corrected_quarter_from_env(),
            )
            metadata = {**report_metadata(report, level), **failures_metadata(report)}
            if report.count(Status.FAILED):
                context.log.error(failure_description(report))
                failed.append((report, metadata))
            results[partition_key] = (report, metadata)
        if failed:
            report, metadata = failed[0]
            raise dg.Failure(description=failure_description(report), metadata=metadata)
        if len(results) == 1:
            [(report, metadata)] = results.values()
            return dg.MaterializeResult(metadata={**metadata, **growth_metadata(engine, report)})
        return dg.MaterializeResult(
            metadata={
                "partitions": dg.MetadataValue.int(len(results)),
                "rows_written": dg.MetadataValue.int(sum(r.rows_written(level) for r, _ in results.values())),
                "seconds": dg.MetadataValue.float(round(sum(r.seconds for r, _ in results.values()), 3)),
            }
        )

    return aggregation


AGGREGATION_ASSETS: dict[tuple[Level, PeriodType], dg.AssetsDefinition] = {
    (level, period): _build_asset(level, period) for period in PeriodType for level in Level
}
