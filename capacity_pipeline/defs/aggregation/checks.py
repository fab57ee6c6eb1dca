"""Asset checks of every aggregation asset, per partition, evaluated wherever a partition is written.

The checks are specs of the aggregation assets themselves, so every materialization evaluates them
in its own step (UI, backfill, automation, the API's runs), and the nightly op reports them for
the partitions it wrote. A failed check warns (severity WARN); it does not undo the rows. The SQL
lives in the domain (domain/aggregation/checks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.defs.partitions import window_for_key
from capacity_pipeline.domain.aggregation import checks
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, Window

DomainCheck = Callable[[Engine, Level, PeriodType, Window], checks.CheckOutcome]

CHECKS: dict[str, tuple[DomainCheck, str]] = {
    "min_avg_max": (checks.check_min_avg_max, "min <= average <= max on every row of the period"),
    "no_negative_counts": (checks.check_no_negative_counts, "no count column is negative"),
    "coverage": (checks.check_coverage, "every active instance with stats in the window has its row"),
    "no_negative_input": (
        checks.check_no_negative_input,
        "no sample in the window has a negative size or count (WhaleFall would average it silently)",
    ),
}


def check_specs(key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=key, description=description, partitions_def=partitions)
        for name, (_, description) in CHECKS.items()
    ]


def evaluate(
    engine: Engine, key: dg.AssetKey, level: Level, period: PeriodType, partition_key: str, names: Iterable[str]
) -> list[dg.AssetCheckEvaluation]:
    """The named checks of one partition, as evaluations recorded on that partition."""
    window = window_for_key(period, partition_key)
    evaluations = []
    for name in names:
        domain_check, _ = CHECKS[name]
        outcome = domain_check(engine, level, period, window)
        sample = [f"{instance_id}" + (f" ({label})" if label else "") for instance_id, label in outcome.sample]
        evaluations.append(
            dg.AssetCheckEvaluation(
                asset_key=key,
                check_name=name,
                passed=outcome.passed,
                partition=partition_key,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "violations": dg.MetadataValue.int(outcome.violations),
                    "instances": ", ".join(sample) or "-",
                    "window": str(window),
                },
            )
        )
    return evaluations


def as_result(evaluation: dg.AssetCheckEvaluation) -> dg.AssetCheckResult:
    """An evaluation as a step's own check result (a run of one partition records it there)."""
    return dg.AssetCheckResult(
        asset_key=evaluation.asset_key,
        check_name=evaluation.check_name,
        passed=evaluation.passed,
        severity=evaluation.severity,
        metadata=evaluation.metadata,
    )
