"""The fleet at a glance, from the stored forecasts of one as-of day and level: the series that reach
their limit soonest (else the fastest growing), the fleet's P50 totals per horizon, and, for the
series nearest its limit, its recent history and its band (for a chart).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, func, or_, select

from capacity_pipeline.domain.forecast.model import ForecastRow, Quality, SeriesKey
from capacity_pipeline.domain.forecast.series import read_series
from capacity_pipeline.domain.forecast.store import forecast_row
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.storage.tables import tables_for


@dataclass(frozen=True)
class FleetEntry:
    """One series of the ranking: its forecasts at every horizon (one row each, shortest first)."""

    key: SeriesKey
    rows: list[ForecastRow]

    @property
    def first(self) -> ForecastRow:
        return self.rows[0]

    def as_json(self) -> dict[str, Any]:
        first = self.first
        return {
            "instance_id": self.key.instance_id,
            "database_name": self.key.database_name,
            "limit_mb": first.limit_mb,
            "days_to_limit_p10": first.days_to_limit_p10,
            "days_to_limit_p50": first.days_to_limit_p50,
            "days_to_limit_p90": first.days_to_limit_p90,
            "growth_mb_per_day": first.growth_mb_per_day,
            "change_point_date": None if first.change_point_date is None else first.change_point_date.isoformat(),
            "p50_mb": {str(row.horizon_days): row.p50_mb for row in self.rows},
        }


@dataclass(frozen=True)
class SeriesChart:
    """A series' samples over the last days up to the as-of day, and its band at each horizon."""

    key: SeriesKey
    limit_mb: int | None
    history: list[tuple[date, float]]  # (day, size MB), days without a sample left out
    band: list[tuple[date, float, float, float]]  # (target day, P10, P50, P90) per horizon


@dataclass(frozen=True)
class FleetSummary:
    as_of: date
    level: Level
    series: int  # series with a stored forecast
    forecast: int  # ... of quality ok
    p50_totals_mb: dict[int, float]  # horizon -> sum of P50 over ok series (quantiles do not add, P50s do)
    top: list[FleetEntry]
    nearest: SeriesChart | None


def fleet_summary(engine: Engine, level: Level, as_of: date, *, top: int = 10, history_days: int = 90) -> FleetSummary:
    """The summary of the forecasts stored for (as_of, level); empty when there are none."""
    forecasts = tables_for(engine).tables["capacity_forecasts"]
    c = forecasts.c
    stored = and_(c.as_of_date == as_of, c.level == level.value)
    with engine.connect() as connection:
        shortest = connection.execute(select(func.min(c.horizon_days)).where(stored)).scalar()
        if shortest is None:
            return FleetSummary(as_of, level, 0, 0, {}, [], None)
        counts = dict(
            connection.execute(
                select(c.quality, func.count()).where(stored, c.horizon_days == shortest).group_by(c.quality)
            ).all()
        )
        totals = {
            int(horizon): float(total)
            for horizon, total in connection.execute(
                select(c.horizon_days, func.sum(c.p50_mb))
                .where(stored, c.quality == Quality.OK.value)
                .group_by(c.horizon_days)
                .order_by(c.horizon_days)
            )
        }
        # Soonest P50 day first, then the early case's day, then the fastest growth.
        ranked = connection.execute(
            select(c.instance_id, c.database_name)
            .where(stored, c.horizon_days == shortest, c.quality == Quality.OK.value)
            .order_by(
                c.days_to_limit_p50.is_(None),
                c.days_to_limit_p50,
                c.days_to_limit_p10.is_(None),
                c.days_to_limit_p10,
                c.growth_mb_per_day.desc(),
                c.instance_id,
                c.database_name,
            )
            .limit(top)
        ).all()
        keys = [SeriesKey(row.instance_id, row.database_name) for row in ranked]
        entries = _entries(connection, forecasts, stored, keys)
        nearest = _chart(connection, level, as_of, entries[0], history_days) if entries else None
    return FleetSummary(
        as_of,
        level,
        series=sum(counts.values()),
        forecast=counts.get(Quality.OK.value, 0),
        p50_totals_mb=totals,
        top=entries,
        nearest=nearest,
    )


def _entries(connection: Connection, forecasts: Any, stored: Any, keys: list[SeriesKey]) -> list[FleetEntry]:
    if not keys:
        return []
    c = forecasts.c
    one_of = or_(
        *(
            and_(
                c.instance_id == key.instance_id,
                c.database_name.is_(None) if key.database_name is None else c.database_name == key.database_name,
            )
            for key in keys
        )
    )
    rows: dict[SeriesKey, list[ForecastRow]] = {key: [] for key in keys}
    for record in connection.execute(select(forecasts).where(stored, one_of).order_by(c.horizon_days)):
        row = forecast_row(record)
        rows[SeriesKey(row.instance_id, row.database_name)].append(row)
    return [FleetEntry(key, rows[key]) for key in keys]


def _chart(connection: Connection, level: Level, as_of: date, entry: FleetEntry, history_days: int) -> SeriesChart:
    batch = read_series(connection, level, [entry.key.instance_id], as_of, history_days)
    history: list[tuple[date, float]] = []
    if entry.key in batch.keys:
        values = batch.values[batch.keys.index(entry.key)]
        history = [(batch.day(column), float(values[column])) for column in np.nonzero(~np.isnan(values))[0]]
    band = [(as_of + timedelta(days=row.horizon_days), row.p10_mb, row.p50_mb, row.p90_mb) for row in entry.rows]
    return SeriesChart(entry.key, entry.first.limit_mb, history, band)
