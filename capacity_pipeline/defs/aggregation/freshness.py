"""Staleness in the UI: a check per roll-up that fails while a window's samples changed after it was
last aggregated, and passes again once it is re-aggregated.

`samples_unchanged_since_aggregated` looks at the windows the changed days of the observed range
feed (domain/aggregation/refresh.py) and lists those still stale. It is evaluated where the answer
changes: by each observation (a change makes windows stale) and by each materialization of the
roll-up (a refresh makes them fresh), both recorded on the asset without a run of their own; the
Checks tab's "Execute" runs it by hand.
"""

from __future__ import annotations

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain.aggregation.refresh import stale_windows_of_changed_days
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today
from capacity_pipeline.domain.samples.versions import observed_days

CHECK_NAME = "samples_unchanged_since_aggregated"
_SHOWN = 10  # stale windows listed in the check's metadata


def freshness_evaluation(
    engine: Engine,
    key: dg.AssetKey,
    level: Level,
    period: PeriodType,
    whalefall: WhaleFallDatabase,
    *,
    automate_current_periods: bool,
) -> dg.AssetCheckEvaluation:
    """Whether every window the observed changes feed has been re-aggregated since."""
    today = china_today()
    days = observed_days(today, whalefall.observe_days)
    stale = stale_windows_of_changed_days(
        engine,
        level,
        period,
        days,
        today=today,
        include_in_progress=automate_current_periods,
        corrected_quarter=whalefall.corrected_quarter,
    )
    listed = [
        f"{w.period_start}: {w.instances} instance(s) changed on {', '.join(d.isoformat() for d in w.days[:3])}"
        + (" and more" if len(w.days) > 3 else "")
        + ("" if w.marked else " (never aggregated since changes are followed)")
        for w in stale[:_SHOWN]
    ]
    more = [f"... and {len(stale) - _SHOWN} more"] if len(stale) > _SHOWN else []
    return dg.AssetCheckEvaluation(
        asset_key=key,
        check_name=CHECK_NAME,
        passed=not stale,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(stale)} window(s) whose samples changed after they were aggregated"
        if stale
        else "every window is aggregated after its samples' last change",
        metadata={
            "stale_windows": dg.MetadataValue.int(len(stale)),
            "windows": "\n".join(listed + more) or "none",
            "observed_days": str(days),
        },
    )


def report_freshness(
    instance: dg.DagsterInstance,
    engine: Engine,
    keys: dict[PeriodType, dg.AssetKey],
    level: Level,
    whalefall: WhaleFallDatabase,
    *,
    automate_current_periods: bool,
) -> None:
    """Record each roll-up's freshness check on the asset, outside any run of the check itself."""
    for period, key in keys.items():
        evaluation = freshness_evaluation(
            engine, key, level, period, whalefall, automate_current_periods=automate_current_periods
        )
        instance.report_runless_asset_event(evaluation)


def build_freshness_check(
    key: dg.AssetKey, level: Level, period: PeriodType, *, automate_current_periods: bool
) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=key,
        name=CHECK_NAME,
        blocking=False,
        description="Fails (WARN) while a window's samples changed after it was last aggregated: lists them.",
    )
    def samples_unchanged_since_aggregated(whalefall: WhaleFallDatabase) -> dg.AssetCheckResult:
        evaluation = freshness_evaluation(
            whalefall.connected_engine(),
            key,
            level,
            period,
            whalefall,
            automate_current_periods=automate_current_periods,
        )
        return dg.AssetCheckResult(
            passed=evaluation.passed,
            severity=evaluation.severity,
            description=evaluation.description,
            metadata=evaluation.metadata,
        )

    return samples_unchanged_since_aggregated
