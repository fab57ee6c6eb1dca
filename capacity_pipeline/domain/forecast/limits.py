"""Capacity limits: the size (MB) at which an instance or one of its databases is full.

Set, unset and listed by DBAs (command line, API); read by the forecasts to say when a limit is
reached. Input is checked before anything is written, with errors that name the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, select

from capacity_pipeline.domain.forecast.model import InvalidForecastInput, Limit, SeriesKey
from capacity_pipeline.domain.storage.database import in_transaction
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.tables import tables_for

MAX_LIMIT_MB = 2**63 - 1  # a BIGINT
MAX_NOTE_CHARS = 1000
_MAX_INSTANCE_ID = 2**31 - 1


def _instance_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_INSTANCE_ID:
        raise InvalidForecastInput(f"instance_id: expected a whole number from 1 to {_MAX_INSTANCE_ID}", got=value)
    return value


def _database_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise InvalidForecastInput(
            "database_name: expected a non-blank name of at most 255 characters, or none for the instance itself",
            got=value,
        )
    return value


def _limit_mb(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT_MB:
        raise InvalidForecastInput(f"limit_mb: expected a whole number of MB from 1 to {MAX_LIMIT_MB}", got=value)
    return value


def _note(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NOTE_CHARS:
        raise InvalidForecastInput(f"note: expected text of at most {MAX_NOTE_CHARS} characters")
    return value


def _updated_by(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_INSTANCE_ID:
        raise InvalidForecastInput(f"updated_by: expected a user id from 1 to {_MAX_INSTANCE_ID}", got=value)
    return value


def _series(limits_table: Any, instance_id: int, database_name: str | None) -> Any:
    column = limits_table.c.database_name
    return and_(
        limits_table.c.instance_id == instance_id,
        column.is_(None) if database_name is None else column == database_name,
    )


def _limit(row: Any) -> Limit:
    updated_at = row.updated_at
    if isinstance(updated_at, str):  # SQLite hands back its text
        updated_at = datetime.fromisoformat(updated_at)
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=UTC)
    return Limit(row.instance_id, row.database_name, int(row.limit_mb), row.note, row.updated_by, updated_at)


def set_limit(
    engine: Engine,
    instance_id: int,
    database_name: str | None,
    limit_mb: int,
    *,
    note: str | None = None,
    updated_by: int | None = None,
    now: datetime | None = None,
) -> Limit:
    """Set (or replace) the limit of an instance (database_name None) or of one of its databases."""
    instance_id, database_name = _instance_id(instance_id), _database_name(database_name)
    values = {
        "limit_mb": _limit_mb(limit_mb),
        "note": _note(note),
        "updated_by": _updated_by(updated_by),
        "updated_at": now or datetime.now(UTC),
    }
    metadata = tables_for(engine)
    limits, instances = metadata.tables["capacity_limits"], metadata.tables["instances"]

    def write(connection: Connection) -> Limit:
        if connection.execute(select(instances.c.id).where(instances.c.id == instance_id)).first() is None:
            raise InvalidForecastInput(f"instance_id: no instance {instance_id}")
        # One upsert on the series' own unique index: two writers of one limit cannot both insert.
        own = limits.c.database_name.is_(None) if database_name is None else limits.c.database_name.is_not(None)
        keys = ["instance_id"] if database_name is None else ["instance_id", "database_name"]
        upsert = (
            dialect_of(connection)
            .insert_ignoring_conflicts(limits)
            .values(instance_id=instance_id, database_name=database_name, **values)
        )
        connection.execute(upsert.on_conflict_do_update(index_elements=keys, index_where=own, set_=values))
        return _limit(connection.execute(select(limits).where(_series(limits, instance_id, database_name))).one())

    return in_transaction(engine, write)


def unset_limit(engine: Engine, instance_id: int, database_name: str | None = None) -> bool:
    """Remove a limit; True when there was one."""
    instance_id, database_name = _instance_id(instance_id), _database_name(database_name)
    limits = tables_for(engine).tables["capacity_limits"]
    with engine.begin() as connection:
        return connection.execute(delete(limits).where(_series(limits, instance_id, database_name))).rowcount > 0


def list_limits(bind: Engine | Connection, instance_id: int | None = None) -> list[Limit]:
    """Every limit (or one instance's), by instance and then database (the instance's own first)."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return list_limits(connection, instance_id)
    limits = tables_for(bind).tables["capacity_limits"]
    query = select(limits).order_by(limits.c.instance_id, limits.c.database_name.is_not(None), limits.c.database_name)
    if instance_id is not None:
        query = query.where(limits.c.instance_id == _instance_id(instance_id))
    return [_limit(row) for row in bind.execute(query)]


def limits_of(connection: Connection, instance_ids: Sequence[int]) -> dict[SeriesKey, int]:
    """The limits of these instances and their databases, by series."""
    limits = tables_for(connection).tables["capacity_limits"]
    query = select(limits.c.instance_id, limits.c.database_name, limits.c.limit_mb).where(
        limits.c.instance_id.in_(list(instance_ids))
    )
    return {SeriesKey(row.instance_id, row.database_name): int(row.limit_mb) for row in connection.execute(query)}
