"""The calibration ledger: the stored forecasts keep score of themselves once their horizon passes.

For a day D, every stored forecast (quality ok) whose target day (as-of day + horizon) is on or
before D and has an actual sample that day is scored: was the actual inside [P10, P90], and how far
was P50 from it. One set-based query per level, grouped by horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, text

from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.storage.dialects import dialect_of

# A P10..P90 band should hold about 80 % of outcomes; outside this range it is miscalibrated (issue 14).
CALIBRATED_PERCENT = (65.0, 95.0)

_ACTUALS = {
    Level.INSTANCE: (
        "instance_size_stats",
        "a.total_size_mb",
        "a.instance_id = f.instance_id AND a.is_deleted IS FALSE",
    ),
    Level.DATABASE: (
        "database_size_stats",
        "a.size_mb",
        "a.instance_id = f.instance_id AND a.database_name = f.database_name",
    ),
}


@dataclass(frozen=True)
class CalibrationRow:
    """How one level's forecasts at one horizon fared against what happened."""

    level: Level
    horizon_days: int
    scored: int  # forecasts whose target day had an actual sample
    inside: int  # ... of which the actual lay inside [P10, P90]
    p50_mape_percent: float | None  # mean |P50 - actual| / actual (actuals of 0 MB left out)
    first_target: date | None
    last_target: date | None

    @property
    def inside_percent(self) -> float | None:
        return None if self.scored == 0 else 100.0 * self.inside / self.scored

    @property
    def calibrated(self) -> bool | None:
        """Whether the share inside the band is within CALIBRATED_PERCENT (None: nothing scored yet)."""
        share = self.inside_percent
        return None if share is None else CALIBRATED_PERCENT[0] <= share <= CALIBRATED_PERCENT[1]

    def as_json(self) -> dict[str, Any]:
        share, mape = self.inside_percent, self.p50_mape_percent
        return {
            "level": self.level.value,
            "horizon_days": self.horizon_days,
            "scored": self.scored,
            "inside_p10_p90_percent": None if share is None else round(share, 2),
            "p50_mape_percent": None if mape is None else round(mape, 3),
            "first_target_date": None if self.first_target is None else self.first_target.isoformat(),
            "last_target_date": None if self.last_target is None else self.last_target.isoformat(),
        }


def _date(value: Any) -> date | None:
    return value if value is None or isinstance(value, date) else date.fromisoformat(value)


def calibration(
    engine: Engine, day: date, *, level: Level | None = None, since: date | None = None
) -> list[CalibrationRow]:
    """The ledger on `day`: per level and horizon, the stored forecasts whose target day is in
    [since, day] (default: every one up to `day`) scored against the samples of their target day."""
    rows: list[CalibrationRow] = []
    with engine.connect() as connection:
        for each in (level,) if level is not None else (Level.INSTANCE, Level.DATABASE):
            rows.extend(_score(connection, each, day, since))
    return rows


def _score(connection: Connection, level: Level, day: date, since: date | None) -> list[CalibrationRow]:
    table, actual, match = _ACTUALS[level]
    target = dialect_of(connection).date_plus_days("f.as_of_date", "f.horizon_days")
    window = f"{target} <= :day" + ("" if since is None else f" AND {target} >= :since")
    query = f"""
        SELECT f.horizon_days,
               count(*) AS scored,
               sum(CASE WHEN {actual} BETWEEN f.p10_mb AND f.p90_mb THEN 1 ELSE 0 END) AS inside,
               avg(abs(f.p50_mb - {actual}) * 100.0 / NULLIF({actual}, 0)) AS mape,
               min({target}) AS first_target, max({target}) AS last_target
        FROM capacity_forecasts AS f
        JOIN {table} AS a ON {match} AND a.collected_date = {target}
        WHERE f.level = :level AND f.quality = 'ok' AND f.as_of_date < :day AND {window}
        GROUP BY f.horizon_days
        ORDER BY f.horizon_days"""
    params = {"level": level.value, "day": day, "since": since}
    return [
        CalibrationRow(
            level,
            int(row.horizon_days),
            int(row.scored),
            int(row.inside),
            None if row.mape is None else float(row.mape),
            _date(row.first_target),
            _date(row.last_target),
        )
        for row in connection.execute(text(query), params)
    ]
