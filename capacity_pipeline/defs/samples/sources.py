"""WhaleFall's samples in the asset graph: observable source assets with a data version per partition.

* `database_size_stats` / `instance_size_stats`: one partition per day (Asia/Shanghai, like the
  daily assets). An observation logs which instances' samples changed on which day
  (domain/samples/changes.py) and gives each changed day a new data version: the id of its latest
  change. Only changed days are recorded, so the event log grows with changes, not with time, and
  nothing is read back from Dagster.
* `..._quarterly_baseline`: one partition per quarter, the days the next quarter compares with
  (compat 3, Q1). Quarters depend on it, so the graph states WhaleFall's quarterly rule exactly;
  its version is the latest change logged on its days.

The first observation of a level logs nothing and records no data version: what is already
aggregated stands, and automation waits for a sample that actually changes. Observation runs on
its own schedule (observation.py) and from the UI ("Observe sources").
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from capacity_pipeline.defs.aggregation.freshness import report_freshness
from capacity_pipeline.defs.keys import asset_key, baseline_key, stats_key
from capacity_pipeline.defs.partitions import PartitionsByPeriod
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today
from capacity_pipeline.domain.samples.changes import STATS_TABLES, last_changes_within, observe_changes
from capacity_pipeline.domain.samples.versions import observed_days, quarterly_baselines

GROUP = "capacity"  # the samples and their roll-ups in one lineage graph


def change_version(change_id: int) -> dg.DataVersion:
    """A partition's data version: the id of the latest change logged on its days."""
    return dg.DataVersion(f"change-{change_id}")


def _build_stats_source(
    level: Level, partitions: dg.TimeWindowPartitionsDefinition, *, automate_current_periods: bool
) -> dg.SourceAsset:
    table = STATS_TABLES[level]

    @dg.observable_source_asset(
        key=stats_key(level),
        partitions_def=partitions,
        group_name=GROUP,
        description=f"WhaleFall's {table} (compat 1.3, 1.4), one partition per collected_date; its data version "
        "changes when a sample of that day is inserted, updated or deleted.",
    )
    def source(context: dg.AssetExecutionContext, whalefall: WhaleFallDatabase) -> dg.DataVersionsByPartition:
        days = observed_days(china_today(), whalefall.observe_days)
        engine = whalefall.connected_engine()
        observation = observe_changes(engine, level, days)
        context.log.info(observation.describe())
        if observation.changed:  # windows may be stale now: their checks say which
            roll_ups = {period: asset_key(level, period) for period in PeriodType}
            report_freshness(
                context.instance, engine, roll_ups, level, whalefall, automate_current_periods=automate_current_periods
            )
        return dg.DataVersionsByPartition(
            {
                day.isoformat(): change_version(changes.last_change)
                for day, changes in observation.changed.items()
                if partitions.has_partition_key(day.isoformat())
            }
        )

    return source


def _latest_versions(context: dg.AssetExecutionContext, key: dg.AssetKey, partitions: list[str]) -> dict[str, str]:
    """The data version last recorded for each of a few partitions (the baselines in range: at most two)."""
    known = {}
    for partition in partitions:
        records = context.instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        ).records
        if records and records[0].asset_observation is not None:
            known[partition] = records[0].asset_observation.tags.get("dagster/data_version", "")
    return known


def _build_baseline_source(level: Level, partitions: dg.TimeWindowPartitionsDefinition) -> dg.SourceAsset:
    table = STATS_TABLES[level]

    @dg.observable_source_asset(
        key=baseline_key(level),
        partitions_def=partitions,
        group_name=GROUP,
        description=f"The days of {table} that the next quarter's change fields compare with (compat 3, Q1): the "
        "first two months of the quarter, or the whole quarter before a Q1 and in corrected mode.",
    )
    def baseline(context: dg.AssetExecutionContext, whalefall: WhaleFallDatabase) -> dg.DataVersionsByPartition:
        days = observed_days(china_today(), whalefall.observe_days)
        windows = quarterly_baselines(days, corrected_quarter=whalefall.corrected_quarter)
        latest = {
            start.isoformat(): change_version(change_id).value
            for start, change_id in last_changes_within(whalefall.connected_engine(), level, windows).items()
            if partitions.has_partition_key(start.isoformat())
        }
        known = _latest_versions(context, baseline_key(level), list(latest))
        changed = {key: version for key, version in latest.items() if known.get(key) != version}
        name = baseline_key(level).to_user_string()
        context.log.info(f"{name}: {len(changed)} of {len(windows)} baseline(s) in range changed")
        return dg.DataVersionsByPartition({key: dg.DataVersion(version) for key, version in changed.items()})

    return baseline


@dataclass(frozen=True)
class SampleSources:
    """The sample sources of both levels: per day, and per quarterly baseline."""

    stats: dict[Level, dg.SourceAsset]
    baselines: dict[Level, dg.SourceAsset]

    @property
    def all(self) -> list[dg.SourceAsset]:
        return [*self.stats.values(), *self.baselines.values()]


def build_sample_sources(partitions: PartitionsByPeriod, *, automate_current_periods: bool) -> SampleSources:
    return SampleSources(
        stats={
            level: _build_stats_source(
                level, partitions[PeriodType.DAILY], automate_current_periods=automate_current_periods
            )
            for level in Level
        },
        baselines={level: _build_baseline_source(level, partitions[PeriodType.QUARTERLY]) for level in Level},
    )
