"""Storing forecasts in capacity_forecasts and reading them back as ForecastRows.

A recomputation rewrites: the forecasts of an as-of day, a level and a batch of instances are
deleted and inserted again in one transaction, so a reader sees the old batch or the new one,
never half of each, and a series that no longer has samples loses its stale rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, delete, func, select

from capacity_pipeline.domain.forecast.model import ForecastRow, InvalidForecastInput, Quality
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.tables import tables_for

if TYPE_CHECKING:  # the API reads forecasts with the base install, which has no pandas
    import pandas as pd

_READ_BATCH = 5000  # rows fetched at a time when reading back


def replace_forecasts(
    connection: Connection, as_of: date, level: Level, instance_ids: Sequence[int], rows: pd.DataFrame
) -> int:
    """Rewrite the forecasts of (as_of, level, these instances) with `rows` (capacity_forecasts'
    columns); in the caller's transaction. Returns the rows written."""
    forecasts = tables_for(connection).tables["capacity_forecasts"]
    dialect = dialect_of(connection)
    # Two recomputations of one as-of day and level take turns instead of colliding on the keys.
    dialect.serialise(connection, f"capacity_forecasts:{level.value}:{as_of.isoformat()}")
    connection.execute(
        delete(forecasts).where(
            forecasts.c.as_of_date == as_of,
            forecasts.c.level == level.value,
            forecasts.c.instance_id.in_(list(instance_ids)),
        )
    )
    dialect.insert_rows(connection, forecasts, rows)
    return len(rows)


def _date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value)  # SQLite's text


def _datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def forecast_row(record: Any) -> ForecastRow:
    """A capacity_forecasts row (as either dialect hands it back) as a ForecastRow."""
    return ForecastRow(
        as_of_date=_date(record.as_of_date),
        level=Level(record.level),
        instance_id=record.instance_id,
        database_name=record.database_name,
        horizon_days=record.horizon_days,
        p10_mb=record.p10_mb,
        p50_mb=record.p50_mb,
        p90_mb=record.p90_mb,
        growth_mb_per_day=record.growth_mb_per_day,
        limit_mb=None if record.limit_mb is None else int(record.limit_mb),
        days_to_limit_p10=record.days_to_limit_p10,
        days_to_limit_p50=record.days_to_limit_p50,
        days_to_limit_p90=record.days_to_limit_p90,
        quality=Quality(record.quality),
        change_point_date=_date(record.change_point_date),
        samples_used=record.samples_used,
        method=record.method,
        computed_at=_datetime(record.computed_at),
    )


def _selected(
    forecasts: Any, level: Level | None, instance_id: int | None, database_name: str | None, as_of: date | None
) -> Any:
    """The condition of a read: these filters, and without `as_of` each level's latest as-of day."""
    if database_name is not None and level is Level.INSTANCE:
        raise InvalidForecastInput("database_name: only forecasts at level database have one")
    c = forecasts.c
    conditions = []
    if level is not None:
        conditions.append(c.level == level.value)
    if instance_id is not None:
        conditions.append(c.instance_id == instance_id)
    if database_name is not None:
        conditions.append(c.database_name == database_name)
    if as_of is not None:
        conditions.append(c.as_of_date == as_of)
    else:
        latest = forecasts.alias("latest")
        conditions.append(
            c.as_of_date == select(func.max(latest.c.as_of_date)).where(latest.c.level == c.level).scalar_subquery()
        )
    return and_(*conditions)


def read_forecasts(
    engine: Engine,
    *,
    level: Level | None = None,
    instance_id: int | None = None,
    database_name: str | None = None,
    as_of: date | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> Iterator[ForecastRow]:
    """Stored forecasts, by as-of day, level, instance, database (the instance's own first), horizon.

    Without `as_of`, each level's latest as-of day. `database_name` selects one database (database
    level only). `offset` and `limit` take one page of that order (the API's). Rows stream from
    the database a few thousand at a time.
    """
    forecasts = tables_for(engine).tables["capacity_forecasts"]
    c = forecasts.c
    query = (
        select(forecasts)
        .where(_selected(forecasts, level, instance_id, database_name, as_of))
        .order_by(c.as_of_date, c.level, c.instance_id, c.database_name.is_not(None), c.database_name, c.horizon_days)
        .offset(offset)
        .limit(limit)
    )
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=_READ_BATCH).execute(query)
        for record in result:
            yield forecast_row(record)


def count_forecasts(
    engine: Engine,
    *,
    level: Level | None = None,
    instance_id: int | None = None,
    database_name: str | None = None,
    as_of: date | None = None,
) -> int:
    """How many rows `read_forecasts` with the same filters gives (without a page)."""
    forecasts = tables_for(engine).tables["capacity_forecasts"]
    query = (
        select(func.count())
        .select_from(forecasts)
        .where(_selected(forecasts, level, instance_id, database_name, as_of))
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def latest_as_of(bind: Engine | Connection, level: Level) -> date | None:
    """The latest as-of day with stored forecasts at `level`."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return latest_as_of(connection, level)
    forecasts = tables_for(bind).tables["capacity_forecasts"]
    query = select(func.max(forecasts.c.as_of_date)).where(forecasts.c.level == level.value)
    return _date(bind.execute(query).scalar())
