"""The code location's definitions, built in one place from one typed `Settings` value.

Nothing here reads the environment: `capacity_pipeline.defs.defs` passes the settings Dagster's
process read when it loaded the location, and tests pass their own.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg

from capacity_pipeline.defs.aggregation.assets import aggregation_selection, build_aggregation_assets
from capacity_pipeline.defs.aggregation.automation import build_automation_sensor
from capacity_pipeline.defs.aggregation.freshness import build_freshness_check
from capacity_pipeline.defs.aggregation.jobs import (
    build_nightly_job,
    calculate_database_schedule,
    capacity_aggregate_current_job,
)
from capacity_pipeline.defs.aggregation.retries import build_retry_sensor
from capacity_pipeline.defs.forecast.assets import build_forecast_assets, forecast_selection
from capacity_pipeline.defs.forecast.automation import build_forecast_automation_sensor
from capacity_pipeline.defs.keys import asset_key
from capacity_pipeline.defs.partitions import partitions_by_period
from capacity_pipeline.defs.resources import whalefall_from_settings
from capacity_pipeline.defs.run_center.reconciler import run_center_reconciler
from capacity_pipeline.defs.run_center.trigger_sensor import build_trigger_sensor
from capacity_pipeline.defs.samples.observation import build_observation
from capacity_pipeline.defs.samples.sources import build_sample_sources
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.settings import Settings


def build_defs(settings: Settings, *, resources: Mapping[str, Any] | None = None) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor of the location, shaped by `settings`.

    `resources` replaces the `whalefall` resource made from the settings (whose URL is read from
    WHALEFALL_DATABASE_URL when a run uses it); tests point it at their own database.
    """
    # Two features this location relies on are labelled in 1.13 (pinned exactly): BackfillPolicy
    # (beta) lets one backfill run take several partitions; partitioned asset checks (preview) let
    # a check look at exactly the partition that was written.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    settings.forecast_options()  # forecast settings that do not fit together fail the load, naming the field
    partitions = partitions_by_period(settings.partitions_start)
    sources = build_sample_sources(partitions, automate_current_periods=settings.automate_current_periods)
    aggregations = build_aggregation_assets(
        partitions,
        automate_current_periods=settings.automate_current_periods,
        max_queued=settings.automation_max_queued,
    )
    forecasts = build_forecast_assets(partitions[PeriodType.DAILY])
    observation_jobs, observation_schedules = build_observation(settings, sources)
    freshness_checks = [
        build_freshness_check(
            asset_key(level, period), level, period, automate_current_periods=settings.automate_current_periods
        )
        for level, period in aggregations
    ]
    return dg.Definitions(
        assets=[*sources.all, *aggregations.values(), *forecasts.values()],
        asset_checks=freshness_checks,
        jobs=[
            capacity_aggregate_current_job,
            build_nightly_job(partitions, automate_current_periods=settings.automate_current_periods),
            *observation_jobs,
        ],
        schedules=[calculate_database_schedule, *observation_schedules],
        sensors=[
            build_trigger_sensor(partitions),
            run_center_reconciler,
            build_automation_sensor(settings, aggregation_selection()),
            build_retry_sensor(settings, aggregation_selection()),
            build_forecast_automation_sensor(settings, forecast_selection()),
        ],
        resources=dict(resources) if resources is not None else {"whalefall": whalefall_from_settings(settings)},
        # Steps of one run go in one process, in WhaleFall's order (database level, then instance
        # level), and a run starts no extra process per step.
        executor=dg.in_process_executor,
    )
