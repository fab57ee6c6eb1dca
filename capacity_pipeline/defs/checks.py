"""Asset checks on every aggregation asset, per partition. A failed check warns in the UI; it
does not undo the materialization. The SQL lives in the domain (domain/checks.py)."""

from collections.abc import Callable

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.defs.assets import AGGREGATION_ASSETS
from capacity_pipeline.defs.partitions import PARTITIONS, window_for_key
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain import checks
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, Window

DomainCheck = Callable[[Engine, Level, PeriodType, Window], checks.CheckOutcome]

_CHECKS: dict[str, tuple[DomainCheck, str]] = {
    "min_avg_max": (checks.check_min_avg_max, "min <= average <= max on every row of the period"),
    "no_negative_counts": (checks.check_no_negative_counts, "no count column is negative"),
    "coverage": (checks.check_coverage, "every active instance with stats in the window has its row"),
}


def _build_check(level: Level, period: PeriodType, asset: dg.AssetsDefinition, name: str) -> dg.AssetChecksDefinition:
    domain_check, description = _CHECKS[name]

    @dg.asset_check(asset=asset, name=name, description=description, partitions_def=PARTITIONS[period], blocking=False)
    def check(context: dg.AssetCheckExecutionContext, whalefall: WhaleFallDatabase) -> dg.AssetCheckResult:
        engine = whalefall.engine()
        outcomes = [domain_check(engine, level, period, window_for_key(period, key)) for key in context.partition_keys]
        violations = sum(o.violations for o in outcomes)
        sample = [f"{instance_id}" + (f"/{name}" if name else "") for o in outcomes for instance_id, name in o.sample]
        return dg.AssetCheckResult(
            passed=violations == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "violations": dg.MetadataValue.int(violations),
                "sample": ", ".join(sample[:20]) or "-",
            },
        )

    return check


AGGREGATION_CHECKS = [
    _build_check(level, period, asset, name)
    for (level, period), asset in AGGREGATION_ASSETS.items()
    for name in _CHECKS
]
