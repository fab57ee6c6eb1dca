"""How the automation learns that samples changed: observation jobs and their schedules.

`observe_capacity_samples` and `observe_quarterly_baselines` (one partitions definition each)
observe the sample sources (sources.py); their schedules run them every CAPACITY_OBSERVE_MINUTES
(default 10), and the UI's "Observe sources" runs them by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from capacity_pipeline.defs.samples.sources import SampleSources
from capacity_pipeline.settings import Settings


def _observation(
    name: str, sources: Sequence[dg.SourceAsset], what: str, settings: Settings
) -> tuple[dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition]:
    """A job observing `sources` (one partitions definition per job) and its schedule."""
    job = dg.define_asset_job(name, selection=dg.AssetSelection.assets(*(s.key for s in sources)), description=what)
    schedule = dg.ScheduleDefinition(
        name=f"{name}_schedule",
        job=job,
        cron_schedule=f"*/{settings.observe_minutes} * * * *",
        execution_timezone="Asia/Shanghai",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="How the automation learns that samples changed (CAPACITY_OBSERVE_MINUTES).",
    )
    return job, schedule


def build_observation(
    settings: Settings, sources: SampleSources
) -> tuple[list[dg.UnresolvedAssetJobDefinition], list[dg.ScheduleDefinition]]:
    """The two observation jobs and their schedules."""
    samples = _observation(
        "observe_capacity_samples",
        list(sources.stats.values()),
        "Observe database_size_stats and instance_size_stats: a new data version for every changed day.",
        settings,
    )
    baselines = _observation(
        "observe_quarterly_baselines",
        list(sources.baselines.values()),
        "Observe the days each quarter compares with: a new data version for every changed quarterly baseline.",
        settings,
    )
    return [samples[0], baselines[0]], [samples[1], baselines[1]]
