"""The calibration ledger as an asset check: `forecast_calibration`, per forecast partition.

On a partition's day, every stored forecast of the asset's level whose target day (as-of day +
horizon) has come, and has a sample that day, is scored (domain/forecast/calibration.py): the share
of actuals inside P10-P90 and the P50 error, per horizon. A band that holds fewer than 65 % or more
than 95 % of them warns (severity WARN): it is too narrow or too wide to be read as P10-P90.
"""

from __future__ import annotations

from datetime import date

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.domain.forecast.calibration import CALIBRATED_PERCENT, CalibrationRow, calibration
from capacity_pipeline.domain.model import Level

CHECK_NAME = "forecast_calibration"
_LOW_PERCENT = CALIBRATED_PERCENT[0]
_LOW, _HIGH = (f"{bound:g}" for bound in CALIBRATED_PERCENT)
DESCRIPTION = (
    "Of every stored forecast whose horizon has passed by this day, the share of actual sizes inside P10-P90 "
    f"and the P50 error, per horizon; warns when a horizon's share is outside {_LOW}-{_HIGH} %."
)


def check_spec(key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(CHECK_NAME, asset=key, description=DESCRIPTION, partitions_def=partitions)


def evaluate(engine: Engine, key: dg.AssetKey, level: Level, partition_key: str) -> dg.AssetCheckEvaluation:
    """The ledger of `level` on the partition's day, as an evaluation recorded on that partition."""
    rows = calibration(engine, date.fromisoformat(partition_key), level=level)
    return dg.AssetCheckEvaluation(
        asset_key=key,
        check_name=CHECK_NAME,
        passed=all(row.calibrated is not False for row in rows),
        partition=partition_key,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=ledger_metadata(rows),
    )


def ledger_metadata(rows: list[CalibrationRow]) -> dict:
    """Per horizon: forecasts scored, share inside the band, P50 error (numbers, so they plot), and a table."""
    metadata: dict = {"calibrated_range": f"{_LOW}-{_HIGH} % inside P10-P90"}
    scored = [row for row in rows if row.scored]
    metadata["scored"] = dg.MetadataValue.int(sum(row.scored for row in rows))
    for row in scored:
        suffix = f"{row.horizon_days}d"
        metadata[f"scored_{suffix}"] = dg.MetadataValue.int(row.scored)
        metadata[f"inside_p10_p90_percent_{suffix}"] = dg.MetadataValue.float(round(row.inside_percent, 2))
        if row.p50_mape_percent is not None:
            metadata[f"p50_error_percent_{suffix}"] = dg.MetadataValue.float(round(row.p50_mape_percent, 3))
    metadata["ledger"] = dg.MetadataValue.md(_table(scored))
    return metadata


def _table(rows: list[CalibrationRow]) -> str:
    if not rows:
        return "_nothing to score yet: no stored forecast has reached its horizon with a sample on that day_"
    lines = [
        "| horizon | scored | inside P10-P90 | P50 error | target days | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        error = "-" if row.p50_mape_percent is None else f"{row.p50_mape_percent:.2f} %"
        verdict = (
            "calibrated"
            if row.calibrated
            else ("band too narrow" if row.inside_percent < _LOW_PERCENT else "band too wide")
        )
        lines.append(
            f"| {row.horizon_days} d | {row.scored} | {row.inside_percent:.1f} % ({row.inside}) | {error} | "
            f"{row.first_target} .. {row.last_target} | {verdict} |"
        )
    return "\n".join(lines)
