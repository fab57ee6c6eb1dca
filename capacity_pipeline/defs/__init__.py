"""The Dagster code location: `defs` is what workspace.yaml loads."""

import warnings

import dagster as dg

# Two features this location relies on are labelled in 1.13 (which is pinned exactly):
# BackfillPolicy (beta) lets one backfill run take several partitions; partitioned asset checks
# (preview) let a check look at exactly the partition that was written.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from capacity_pipeline.defs.assets import AGGREGATION_ASSETS  # noqa: E402
from capacity_pipeline.defs.automation import (  # noqa: E402
    OBSERVATION_JOBS,
    OBSERVATION_SCHEDULES,
    capacity_automation,
)
from capacity_pipeline.defs.jobs import (  # noqa: E402
    calculate_database_job,
    calculate_database_schedule,
    capacity_aggregate_current_job,
)
from capacity_pipeline.defs.resources import whalefall_from_env  # noqa: E402
from capacity_pipeline.defs.sensors import SENSORS  # noqa: E402
from capacity_pipeline.defs.sources import SOURCES  # noqa: E402

defs = dg.Definitions(
    assets=[*SOURCES, *AGGREGATION_ASSETS.values()],
    jobs=[capacity_aggregate_current_job, calculate_database_job, *OBSERVATION_JOBS],
    schedules=[calculate_database_schedule, *OBSERVATION_SCHEDULES],
    sensors=[*SENSORS, capacity_automation],
    resources={"whalefall": whalefall_from_env()},
    # Steps of one run go in one process, in WhaleFall's order (database level, then instance
    # level), and a run starts no extra process per step.
    executor=dg.in_process_executor,
)
