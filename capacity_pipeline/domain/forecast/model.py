"""The forecasts' vocabulary: what a forecast row says (the JSON every edge shows), its quality, a
limit, and the options a computation takes.

A row is typed once here and travels as this type from the method to the table and back to the
edges; `as_json()` is the one place its JSON shape is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from capacity_pipeline.domain.forecast.method import METHOD_NAME, MethodParams
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.storage.dialects import DAY_BITS

_DEFAULT_METHOD = MethodParams()
DEFAULT_HORIZONS = (30, 90, 180)
DEFAULT_HISTORY_DAYS = 365
MAX_HISTORY_DAYS = 2**DAY_BITS  # what one packed sample can say (storage/dialects.py)
DEFAULT_FORECAST_BATCH_SIZE = 50  # instances: 100 databases each is 5 000 series a batch


class Quality(StrEnum):
    OK = "ok"
    INSUFFICIENT_DATA = "insufficient_data"  # too few usable days after the last level shift


# The keys of a forecast's JSON, in order (issue 14; docs/forecasts.md).
JSON_KEYS = (
    "as_of_date",
    "level",
    "instance_id",
    "database_name",
    "horizon_days",
    "p10_mb",
    "p50_mb",
    "p90_mb",
    "growth_mb_per_day",
    "limit_mb",
    "days_to_limit_p10",
    "days_to_limit_p50",
    "days_to_limit_p90",
    "quality",
    "change_point_date",
    "samples_used",
    "method",
)


@dataclass(frozen=True)
class SeriesKey:
    """One forecast series: an instance's own total (database_name None) or one of its databases."""

    instance_id: int
    database_name: str | None = None

    @property
    def level(self) -> Level:
        return Level.INSTANCE if self.database_name is None else Level.DATABASE


@dataclass(frozen=True)
class ForecastRow:
    """One stored forecast: a series at one horizon, as of one day (a row of capacity_forecasts)."""

    as_of_date: date
    level: Level
    instance_id: int
    database_name: str | None
    horizon_days: int
    p10_mb: float | None
    p50_mb: float | None
    p90_mb: float | None
    growth_mb_per_day: float | None
    limit_mb: int | None
    days_to_limit_p10: int | None
    days_to_limit_p50: int | None
    days_to_limit_p90: int | None
    quality: Quality
    change_point_date: date | None
    samples_used: int
    method: str = METHOD_NAME
    computed_at: datetime | None = field(default=None, compare=False)

    def as_json(self) -> dict[str, Any]:
        """Exactly the JSON keys, in order: dates as YYYY-MM-DD, enums as their values, None as null."""
        values = {
            "as_of_date": self.as_of_date.isoformat(),
            "level": self.level.value,
            "instance_id": self.instance_id,
            "database_name": self.database_name,
            "horizon_days": self.horizon_days,
            "p10_mb": self.p10_mb,
            "p50_mb": self.p50_mb,
            "p90_mb": self.p90_mb,
            "growth_mb_per_day": self.growth_mb_per_day,
            "limit_mb": self.limit_mb,
            "days_to_limit_p10": self.days_to_limit_p10,
            "days_to_limit_p50": self.days_to_limit_p50,
            "days_to_limit_p90": self.days_to_limit_p90,
            "quality": self.quality.value,
            "change_point_date": None if self.change_point_date is None else self.change_point_date.isoformat(),
            "samples_used": self.samples_used,
            "method": self.method,
        }
        return {key: values[key] for key in JSON_KEYS}


@dataclass(frozen=True)
class Limit:
    """The size at which a series is full, who set it and when (a row of capacity_limits)."""

    instance_id: int
    database_name: str | None
    limit_mb: int
    note: str | None
    updated_by: int | None
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "database_name": self.database_name,
            "limit_mb": self.limit_mb,
            "note": self.note,
            "updated_by": self.updated_by,
            "updated_at": self.updated_at.isoformat(),
        }


_NOT_GIVEN = object()


class InvalidForecastInput(ValueError):
    """Bad input to a forecast or a limit; the message names the field and what it accepts, then the
    value given. `reason` is the message without that value, for an edge that must not echo its
    input (the HTTP API)."""

    def __init__(self, reason: str, *, got: Any = _NOT_GIVEN) -> None:
        self.reason = reason
        super().__init__(reason if got is _NOT_GIVEN else f"{reason}, got {got!r}")


@dataclass(frozen=True)
class ForecastOptions:
    """How a computation runs: horizons, how much history, batching, and the method's minimum data.

    The defaults are the settings table's (capacity_pipeline/settings.py takes them from here).
    """

    horizons: tuple[int, ...] = DEFAULT_HORIZONS
    history_days: int = DEFAULT_HISTORY_DAYS
    min_usable_days: int = _DEFAULT_METHOD.min_usable_days
    max_days_to_limit: int = _DEFAULT_METHOD.max_days_to_limit
    batch_size: int = DEFAULT_FORECAST_BATCH_SIZE

    def __post_init__(self) -> None:
        if not self.horizons or any(not isinstance(h, int) or h < 1 for h in self.horizons):
            raise InvalidForecastInput(f"horizons: expected whole numbers of days >= 1, got {list(self.horizons)}")
        if len(set(self.horizons)) != len(self.horizons):
            raise InvalidForecastInput(f"horizons: each horizon once, got {list(self.horizons)}")
        if max(self.horizons) > self.max_days_to_limit:
            raise InvalidForecastInput(
                f"horizons: at most max_days_to_limit ({self.max_days_to_limit}) days, got {max(self.horizons)}"
            )
        if self.history_days > MAX_HISTORY_DAYS:
            raise InvalidForecastInput(f"history_days: at most {MAX_HISTORY_DAYS}, got {self.history_days}")
        for name in ("history_days", "min_usable_days", "max_days_to_limit", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidForecastInput(f"{name}: expected a whole number >= 1, got {getattr(self, name)}")
        if self.min_usable_days > self.history_days:
            raise InvalidForecastInput(
                f"min_usable_days: at most history_days ({self.history_days}), got {self.min_usable_days}"
            )

    @property
    def method(self) -> MethodParams:
        return MethodParams(min_usable_days=self.min_usable_days, max_days_to_limit=self.max_days_to_limit)
