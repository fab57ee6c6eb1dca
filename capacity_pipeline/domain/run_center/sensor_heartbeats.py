"""Whether a Dagster daemon is picking requests up: the trigger sensor's last tick.

Each tick of the trigger sensor records itself in `capacity_sensor_heartbeats`; the API's health
reads it back. Both times are the database's own clock, so a host whose clock lags cannot make
the daemon look dead (or alive). No daemon means every request waits the pick-up timeout (300 s)
before it fails: the health says so at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import DateTime, Engine, literal_column, select
from sqlalchemy.exc import SQLAlchemyError

from capacity_pipeline.domain.storage.dialects import dialect_of, first_line
from capacity_pipeline.domain.storage.tables import tables_for

TRIGGER_SENSOR = "capacity_current_trigger"
STALE_AFTER_TICKS = 15  # a tick older than this many intervals (30 s for the 2 s sensor): no daemon

log = logging.getLogger("capacity_pipeline.run_center")


@dataclass(frozen=True)
class SensorTick:
    """A sensor's last tick: how long ago (seconds, by the database's clock) and its interval."""

    seconds_ago: float
    interval_seconds: float

    @property
    def stale(self) -> bool:
        return self.seconds_ago > STALE_AFTER_TICKS * self.interval_seconds


def record_trigger_sensor_tick(engine: Engine, interval_seconds: float) -> None:
    """The trigger sensor ticked now. Never fails the tick: without its table (init-db not run
    since an upgrade) the launcher goes on, the warning says why, and the health says degraded."""
    heartbeats = tables_for(engine).tables["capacity_sensor_heartbeats"]
    dialect = dialect_of(engine)
    now = literal_column(dialect.now_sql, DateTime(timezone=True))
    statement = dialect.insert_ignoring_conflicts(heartbeats).values(
        sensor_name=TRIGGER_SENSOR, ticked_at=now, interval_seconds=interval_seconds
    )
    statement = statement.on_conflict_do_update(
        index_elements=["sensor_name"], set_={"ticked_at": now, "interval_seconds": interval_seconds}
    )
    try:
        with engine.begin() as connection:
            connection.execute(statement)
    except SQLAlchemyError as error:
        log.warning(
            "the trigger sensor's tick was not recorded (%s; run 'capacity-pipeline init-db')", first_line(error)
        )


def last_trigger_sensor_tick(engine: Engine) -> SensorTick | None:
    """The trigger sensor's last tick, or None when it never ticked against this database."""
    heartbeats = tables_for(engine).tables["capacity_sensor_heartbeats"]
    now = literal_column(dialect_of(engine).now_sql, DateTime(timezone=True)).label("now")
    query = select(heartbeats.c.ticked_at, heartbeats.c.interval_seconds, now).where(
        heartbeats.c.sensor_name == TRIGGER_SENSOR
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        return None
    return SensorTick((row.now - row.ticked_at).total_seconds(), row.interval_seconds)
