"""The forecast assets: `instance_capacity_forecasts` and `database_capacity_forecasts`, one partition
per as-of day (Asia/Shanghai), each with its calibration check.

A partition is the forecasts of its level as of its day, from the samples dated on or before it
(domain/forecast/compute.py), stored in capacity_forecasts. It depends on the sample source's
partition of the same day: the forecast of a day is remade when that day's samples change (today's
by automation, automation.py), and the nightly run makes the day it closes (aggregation/jobs.py).
A correction to an older day shows in the next forecast, not in past ones: a past partition is the
forecast as it was made, which the calibration ledger scores.

These runs are not run-center tasks (WhaleFall has no forecast task): no TaskRun is written for
them. A step still beats on its run's run-center links while it works, so that a run which also
aggregates (the nightly run, a hand-made run of both) is not taken for dead while it forecasts.
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

import dagster as dg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from capacity_pipeline.defs.forecast import checks
from capacity_pipeline.defs.forecast.automation import forecast_condition
from capacity_pipeline.defs.forecast.metadata import forecast_metadata
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.samples.sources import GROUP, stats_key
from capacity_pipeline.domain.aggregation.engine import BatchControl
from capacity_pipeline.domain.forecast.compute import ForecastReport, compute_forecasts
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.run_center.worker_watch import WorkerWatch
from capacity_pipeline.domain.storage.dialects import first_line

_SOURCE = {
    Level.INSTANCE: "instance_size_stats.total_size_mb (live rows)",
    Level.DATABASE: "database_size_stats.size_mb",
}


def forecast_key(level: Level) -> dg.AssetKey:
    return dg.AssetKey(f"{level.value}_capacity_forecasts")


def forecast_selection() -> dg.AssetSelection:
    return dg.AssetSelection.assets(*(forecast_key(level) for level in Level))


@contextmanager
def beating(context: dg.OpExecutionContext, whalefall: WhaleFallDatabase, engine: Engine) -> Iterator[None]:
    """Beat on the run's run-center links while the block runs (nothing to beat on: no write)."""
    watch = WorkerWatch(
        engine,
        context.run.run_id,
        BatchControl(),
        interval=whalefall.heartbeat_seconds,
        report=context.log.warning,
        warn=lambda problem: context.log.warning(f"Run-center watch: {problem}"),
    )
    with watch:
        yield


def forecast_day(
    context: dg.OpExecutionContext, whalefall: WhaleFallDatabase, level: Level, as_of: date
) -> tuple[ForecastReport, dict[str, Any]]:
    """Compute and store the forecasts of `level` as of `as_of`; the report and what the UI shows."""
    engine = whalefall.connected_engine()
    options = whalefall.forecast_options()

    def progress(report: ForecastReport) -> None:
        context.log.info(
            f"{level.value} forecasts as of {as_of}: batch {report.batches}, {report.series} series so far "
            f"({report.forecast} forecast, {report.insufficient} with too few samples), {report.rows_written} rows"
        )

    try:
        with beating(context, whalefall, engine):
            report = compute_forecasts(engine, level, as_of, options, on_batch=progress)
        metadata = forecast_metadata(engine, report)
    except DBAPIError as error:
        raise dg.Failure(description=f"The WhaleFall database refused the forecasts: {first_line(error)}") from None
    return report, metadata


def build_forecast_asset(level: Level, partitions: dg.TimeWindowPartitionsDefinition) -> dg.AssetsDefinition:
    key = forecast_key(level)

    @dg.multi_asset(
        name=key.to_python_identifier(),
        specs=[
            dg.AssetSpec(
                key,
                group_name=GROUP,
                deps=[dg.AssetDep(stats_key(level))],  # the as-of day's samples (same partitions)
                kinds={"numpy"},
                automation_condition=forecast_condition(),
                description=f"When each {level.value} reaches its limit, and how sure we are: P10/P50/P90 sizes at "
                f"each horizon and the days a limit is reached, from {_SOURCE[level]} up to the as-of day "
                "(docs/forecasts.md).",
            )
        ],
        check_specs=[checks.check_spec(key, partitions)],
        can_subset=True,  # the check can run alone (the Checks tab's "Execute")
        partitions_def=partitions,
    )
    def forecasts(context: dg.AssetExecutionContext, whalefall: WhaleFallDatabase) -> Iterator:
        if key in context.selected_asset_keys:
            as_of = date.fromisoformat(context.partition_key)
            report, metadata = forecast_day(context.op_execution_context, whalefall, level, as_of)
            context.log.info(f"{level.value} forecasts as of {as_of}: {report.summary()}")
            yield dg.MaterializeResult(asset_key=key, metadata=metadata)
        if not context.selected_asset_check_keys:
            return
        engine = whalefall.connected_engine()
        if context.has_partition_key:
            evaluation = checks.evaluate(engine, key, level, context.partition_key)
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=checks.CHECK_NAME,
                passed=evaluation.passed,
                severity=evaluation.severity,
                metadata=evaluation.metadata,
            )
            return
        # The check alone without a partition: the latest materialized one, recorded on it.
        latest = context.instance.get_latest_materialization_event(key)
        partition = latest.dagster_event.partition if latest is not None and latest.dagster_event else None
        evaluation = checks.evaluate(engine, key, level, partition) if partition is not None else None
        if evaluation is not None:
            context.log_event(evaluation)
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=checks.CHECK_NAME,
            passed=evaluation is None or evaluation.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"checked_partition": partition or "none materialized yet"},
        )

    return forecasts


def build_forecast_assets(partitions: dg.TimeWindowPartitionsDefinition) -> dict[Level, dg.AssetsDefinition]:
    """Both levels' forecast assets on the daily partitions (the as-of days)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # partitioned asset checks (1.13, pinned)
        return {level: build_forecast_asset(level, partitions) for level in Level}
