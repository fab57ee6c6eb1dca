"""Computing the forecasts of one as-of day and level: read a batch of instances' series, fit them
all at once, store them, next batch. Each batch is one transaction; memory follows the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from capacity_pipeline.domain.forecast.limits import limits_of
from capacity_pipeline.domain.forecast.method import METHOD_NAME, Projection, project
from capacity_pipeline.domain.forecast.model import ForecastOptions, Quality
from capacity_pipeline.domain.forecast.series import SeriesBatch, instance_batches, read_series
from capacity_pipeline.domain.forecast.store import replace_forecasts
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.storage.database import retrying
from capacity_pipeline.domain.storage.dialects import dialect_of

DEFAULT_OPTIONS = ForecastOptions()
FIT_CHUNK = 2048  # series fitted at once: the method's temporaries stay a few MB


@dataclass
class ForecastReport:
    """What a computation did: series seen, forecast and refused, rows written, where time went."""

    as_of: date
    level: Level
    horizons: tuple[int, ...]
    series: int = 0
    forecast: int = 0  # quality ok
    insufficient: int = 0
    rows_written: int = 0
    batches: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "fit": 0.0, "write": 0.0})

    def summary(self) -> dict[str, Any]:
        return {
            "as_of_date": self.as_of.isoformat(),
            "level": self.level.value,
            "horizons": list(self.horizons),
            "series": self.series,
            "forecast": self.forecast,
            "insufficient_data": self.insufficient,
            "rows_written": self.rows_written,
            "batches": self.batches,
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
        }


def compute_forecasts(
    engine: Engine,
    level: Level,
    as_of: date,
    options: ForecastOptions = DEFAULT_OPTIONS,
    *,
    instance_ids: Sequence[int] | None = None,
    now: datetime | None = None,
    on_batch: Callable[[ForecastReport], None] | None = None,
) -> ForecastReport:
    """Forecast every series of the active instances (or of `instance_ids`) at `level` as of `as_of`,
    from the samples dated on or before it, and store them (rewriting what was there)."""
    report = ForecastReport(as_of, level, options.horizons)
    computed_at = now or datetime.now(UTC)
    for batch_ids in instance_batches(engine, options.batch_size, instance_ids):

        def one_batch(batch_ids: tuple[int, ...] = batch_ids) -> tuple[int, int, int, dict[str, float]]:
            seconds = {"read": 0.0, "fit": 0.0, "write": 0.0}
            with engine.begin() as connection:
                dialect_of(connection).begin_batch(connection)
                started = time.perf_counter()
                batch = read_series(connection, level, batch_ids, as_of, options.history_days)
                limits = limits_of(connection, batch_ids)
                seconds["read"] = time.perf_counter() - started
                started = time.perf_counter()
                limit = np.array([limits.get(key, np.nan) for key in batch.keys], dtype=np.float64)
                rows = forecast_rows(batch, level, limit, options, computed_at)
                ok = int((rows["quality"] == Quality.OK.value).sum()) // len(options.horizons)
                seconds["fit"] = time.perf_counter() - started
                started = time.perf_counter()
                written = replace_forecasts(connection, as_of, level, batch_ids, rows)
                seconds["write"] = time.perf_counter() - started
            return len(batch.keys), ok, written, seconds

        series, ok, written, seconds = retrying(dialect_of(engine), one_batch)
        report.series += series
        report.forecast += ok
        report.insufficient += series - ok
        report.rows_written += written
        report.batches += 1
        for name, value in seconds.items():
            report.seconds[name] += value
        if on_batch is not None:
            on_batch(report)
    return report


def fit(values: np.ndarray, limit: np.ndarray, options: ForecastOptions) -> Projection:
    """The method over a batch, FIT_CHUNK series at a time (one array operation per chunk)."""
    parts = [
        project(values[start : start + FIT_CHUNK], options.horizons, limit[start : start + FIT_CHUNK], options.method)
        for start in range(0, max(values.shape[0], 1), FIT_CHUNK)
    ]
    if len(parts) == 1:
        return parts[0]
    fields = {
        name: np.concatenate([getattr(part, name) for part in parts])
        for name in Projection.__dataclass_fields__
        if name != "horizons"
    }
    return Projection(horizons=parts[0].horizons, **fields)


def forecast_rows(
    batch: SeriesBatch, level: Level, limit: np.ndarray, options: ForecastOptions, computed_at: datetime
) -> pd.DataFrame:
    """capacity_forecasts' rows of a batch: one per series and horizon, built as columns, not rows."""
    horizons = np.asarray(options.horizons)
    n, k = len(batch.keys), len(horizons)
    if n == 0:
        return pd.DataFrame()
    projection = fit(batch.values, limit, options)
    ok = projection.ok

    def per_row(values: np.ndarray) -> np.ndarray:  # one value per series -> one per (series, horizon)
        return np.repeat(values, k)

    def whole(values: np.ndarray) -> pd.array:
        return pd.array(np.where(np.isnan(values), None, values), dtype="Int64")

    change = projection.change_point
    change_date = pd.Series(
        np.where(change >= 0, np.datetime64(batch.first_day) + change.astype("timedelta64[D]"), np.datetime64("NaT"))
    ).dt.date.astype(object)
    change_date[change < 0] = None
    quality = np.where(ok, Quality.OK.value, Quality.INSUFFICIENT_DATA.value)
    return pd.DataFrame(
        {
            "as_of_date": batch.as_of,
            "level": level.value,
            "instance_id": per_row(np.array([key.instance_id for key in batch.keys])),
            "database_name": per_row(np.array([key.database_name for key in batch.keys], dtype=object)),
            "horizon_days": np.tile(horizons, n),
            "p10_mb": np.round(projection.p10, 2).ravel(),
            "p50_mb": np.round(projection.p50, 2).ravel(),
            "p90_mb": np.round(projection.p90, 2).ravel(),
            "growth_mb_per_day": per_row(np.round(projection.growth_per_day, 3)),
            "limit_mb": whole(per_row(limit)),
            "days_to_limit_p10": whole(per_row(projection.days_to_limit_p10)),
            "days_to_limit_p50": whole(per_row(projection.days_to_limit_p50)),
            "days_to_limit_p90": whole(per_row(projection.days_to_limit_p90)),
            "quality": per_row(quality),
            "change_point_date": per_row(change_date.to_numpy()),
            "samples_used": per_row(projection.samples_used),
            "method": METHOD_NAME,
            "computed_at": computed_at,
        }
    )
