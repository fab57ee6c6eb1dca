"""WhaleFall's samples in the asset graph: observable source assets with a data version per partition.

* `database_size_stats` / `instance_size_stats`: one partition per day (Asia/Shanghai, like the
  daily assets); its data version changes whenever a sample of that day is inserted, updated or
  deleted.
* `..._quarterly_baseline`: one partition per quarter, the days the next quarter compares with
  (compat 3, Q1). Quarters depend on it, so the graph states WhaleFall's quarterly rule exactly.

An observation records only the partitions whose version changed since the last one (the first
records them all), so the event log grows with changes, not with time. Observation runs on its own
schedule (observation.py) and from the UI ("Observe sources").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import dagster as dg

from capacity_pipeline.defs.partitions import PartitionsByPeriod
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, Window, china_today
from capacity_pipeline.domain.samples.versions import (
    STATS_TABLES,
    baseline_days,
    baseline_versions,
    day_versions,
    observed_days,
    quarterly_baselines,
)

GROUP = "capacity"  # the samples and their roll-ups in one lineage graph
EMPTY_DAY = "no-samples"  # the version of a day without samples: deleting them all is a change too


def stats_key(level: Level) -> dg.AssetKey:
    return dg.AssetKey(STATS_TABLES[level])


def baseline_key(level: Level) -> dg.AssetKey:
    return dg.AssetKey(f"{STATS_TABLES[level]}_quarterly_baseline")


def _changed_only(
    context: dg.AssetExecutionContext, key: dg.AssetKey, versions: dict[str, str]
) -> dg.DataVersionsByPartition:
    """The versions that differ from the last ones recorded for their partitions."""
    if not versions:
        context.log.info(f"{key.to_user_string()}: no partition in the observed days")
        return dg.DataVersionsByPartition({})
    records = context.instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=list(versions)), limit=4 * len(versions) or 1
    ).records
    known: dict[str, str] = {}
    for record in records:  # newest first: the first one seen per partition is its latest
        observation = record.asset_observation
        if observation is not None and observation.partition not in known:
            known[observation.partition] = observation.tags.get("dagster/data_version", "")
    changed = {partition: version for partition, version in versions.items() if known.get(partition) != version}
    context.log.info(f"{key.to_user_string()}: {len(changed)} of {len(versions)} partitions changed")
    return dg.DataVersionsByPartition({partition: dg.DataVersion(v) for partition, v in changed.items()})


def _versions_of_every_day(whalefall: WhaleFallDatabase, level: Level, days: Window) -> dict[date, str]:
    found = day_versions(whalefall.connected_engine(), level, days)
    return {day: found.get(day, EMPTY_DAY) for day in _days(days.start, days.end)}


def _days(first: date, last: date) -> list[date]:
    return [date.fromordinal(ordinal) for ordinal in range(first.toordinal(), last.toordinal() + 1)]


def _build_stats_source(level: Level, partitions: dg.TimeWindowPartitionsDefinition) -> dg.SourceAsset:
    table = STATS_TABLES[level]

    @dg.observable_source_asset(
        key=stats_key(level),
        partitions_def=partitions,
        group_name=GROUP,
        description=f"WhaleFall's {table} (compat 1.3, 1.4), one partition per collected_date; its data version "
        "changes when a sample of that day is inserted, updated or deleted.",
    )
    def source(context: dg.AssetExecutionContext, whalefall: WhaleFallDatabase) -> dg.DataVersionsByPartition:
        versions = _versions_of_every_day(whalefall, level, observed_days(china_today(), whalefall.observe_days))
        keyed = {day.isoformat(): v for day, v in versions.items() if partitions.has_partition_key(day.isoformat())}
        return _changed_only(context, stats_key(level), keyed)

    return source


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
        span = baseline_days(windows)  # only their days are read, not the whole range again
        if span is None:  # the usual case: the baselines in range feed quarters not begun yet
            return _changed_only(context, baseline_key(level), {})
        versions = _versions_of_every_day(whalefall, level, span)
        keyed = {
            start.isoformat(): version
            for start, version in baseline_versions(versions, windows).items()
            if partitions.has_partition_key(start.isoformat())
        }
        return _changed_only(context, baseline_key(level), keyed)

    return baseline


@dataclass(frozen=True)
class SampleSources:
    """The sample sources of both levels: per day, and per quarterly baseline."""

    stats: dict[Level, dg.SourceAsset]
    baselines: dict[Level, dg.SourceAsset]

    @property
    def all(self) -> list[dg.SourceAsset]:
        return [*self.stats.values(), *self.baselines.values()]


def build_sample_sources(partitions: PartitionsByPeriod) -> SampleSources:
    return SampleSources(
        stats={level: _build_stats_source(level, partitions[PeriodType.DAILY]) for level in Level},
        baselines={level: _build_baseline_source(level, partitions[PeriodType.QUARTERLY]) for level in Level},
    )
