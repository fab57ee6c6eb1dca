"""The asset keys of the location, in one place: the samples' sources and the roll-ups read each other's."""

from __future__ import annotations

import dagster as dg

from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.domain.samples.changes import STATS_TABLES


def stats_key(level: Level) -> dg.AssetKey:
    """WhaleFall's stats table of the level, one partition per day."""
    return dg.AssetKey(STATS_TABLES[level])


def baseline_key(level: Level) -> dg.AssetKey:
    """The days of the stats table the next quarter compares with, one partition per quarter."""
    return dg.AssetKey(f"{STATS_TABLES[level]}_quarterly_baseline")


def asset_key(level: Level, period: PeriodType) -> dg.AssetKey:
    """A roll-up: one asset per level and period type."""
    return dg.AssetKey(f"{period.value}_{level.table}")
