"""Which clock the run center's writes read: the database's, so every host that writes or compares
run-center times agrees (a host whose clock lags must not make a fresh request look stale, nor a
live worker look dead); tests inject one of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection

from capacity_pipeline.domain.storage.dialects import dialect_of

# A clock reads the time through the connection of the transaction that writes it.
Clock = Callable[[Connection], datetime]


def host_time() -> datetime:
    """This machine's wall clock, timezone-aware UTC."""
    return datetime.now(UTC)


def database_clock(connection: Connection) -> datetime:
    """The database server's wall clock, timezone-aware UTC; an embedded database's is this machine's."""
    return dialect_of(connection).current_time(connection) or host_time()
