"""The nightly run's forecasts: as of the day it closes (yesterday), at both levels, reported as
materializations of those forecast partitions with their calibration check, as the nightly run
reports the aggregation partitions it writes."""

from __future__ import annotations

from datetime import date

import dagster as dg

from capacity_pipeline.defs.forecast import checks
from capacity_pipeline.defs.forecast.assets import forecast_day, forecast_key
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain.model import Level


def forecast_closed_day(
    context: dg.OpExecutionContext,
    whalefall: WhaleFallDatabase,
    day: date,
    partitions: dg.TimeWindowPartitionsDefinition,
) -> None:
    """Both levels as of `day`, each on its own: one level failing does not stop the other; the op
    fails at the end naming what failed. A day before the first partition is computed, not reported."""
    partition_key = day.isoformat()
    reported = partitions.has_partition_key(partition_key)
    failed: list[str] = []
    for level in Level:
        key = forecast_key(level)
        try:
            report, metadata = forecast_day(context, whalefall, level, day)
        except Exception as error:  # noqa: BLE001 - the other level still runs; the op fails below
            context.log.error(f"{level.value} forecasts as of {day} failed: {getattr(error, 'description', error)}")
            failed.append(level.value)
            continue
        context.log.info(f"{level.value} forecasts as of {day}: {report.summary()}")
        if reported:
            context.log_event(dg.AssetMaterialization(asset_key=key, partition=partition_key, metadata=metadata))
            context.log_event(checks.evaluate(whalefall.connected_engine(), key, level, partition_key))
    if failed:
        raise dg.Failure(description=f"forecasts as of {day} failed at level {' and '.join(failed)} (see the log)")
