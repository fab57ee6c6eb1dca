"""Connecting to the WhaleFall database: URL rules, engine set-up, clear errors.

The project speaks to PostgreSQL through one driver, psycopg 3; users may write plain
`postgresql://` URLs. Each dialect sets its engines up (storage/dialects.py): timeouts on every
connection, and on SQLite the SQL functions the aggregation needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from capacity_pipeline.domain.storage.dialects import (
    ConnectionLimits,
    ErrorKind,
    SqlDialect,
    dialect_named,
    dialect_of,
)

T = TypeVar("T")
# A transaction the database rolled back for a deadlock or a serialization failure is run this
# many times in all (then the batch engine splits its batch, and any other caller fails).
TRANSACTION_ATTEMPTS = 5
RECONNECT_BACKOFF_SECONDS = (0.1, 5.0)  # the first wait after a lost connection, and the longest

DATABASE_URL_ENV = "WHALEFALL_DATABASE_URL"


class DatabaseConfigError(ValueError):
    """The database URL is missing or unusable; the message never contains the URL's password."""


def normalise_url(raw: str, source: str = DATABASE_URL_ENV) -> URL:
    """Parse a database URL and pin PostgreSQL URLs to the psycopg 3 driver.

    `source` names where the URL came from (a setting or an option) in error messages.
    """
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        raise DatabaseConfigError(
            f"{source}: not a database URL; expected postgresql://user@host:port/db or sqlite:///path/to/file.db"
        ) from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise DatabaseConfigError(f"{source}: unsupported database {backend!r}; allowed: postgresql, sqlite")


def safe_url(url: URL | str) -> str:
    """The URL as it may appear in logs and messages: password hidden."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.render_as_string(hide_password=True)


def make_engine(url: URL | str, limits: ConnectionLimits | None = None, **kwargs: Any) -> Engine:
    """An engine for the WhaleFall database, ready for the aggregation SQL on either dialect, whose
    every connection has the connect, statement and lock timeouts of `limits`."""
    parsed = normalise_url(url) if isinstance(url, str) else url
    return dialect_named(parsed.get_backend_name()).create_engine(parsed, limits or ConnectionLimits(), **kwargs)


def in_transaction(engine: Engine, work: Callable[[Connection], T], attempts: int = TRANSACTION_ATTEMPTS) -> T:
    """Run `work` in one transaction, again on a deadlock or a serialization failure (see retrying)."""

    def once() -> T:
        with engine.begin() as connection:
            return work(connection)

    return retrying(dialect_of(engine), once, attempts)


def retrying(
    dialect: SqlDialect,
    transaction: Callable[[], T],
    attempts: int = TRANSACTION_ATTEMPTS,
    *,
    reconnect_within: float = 0.0,
) -> T:
    """Run `transaction` again when the database rolled it back whole, so that running it again
    is safe: after a deadlock or a serialization failure (`attempts` runs in all, a short backoff
    between them), and, for up to `reconnect_within` seconds from the first loss, after a lost
    connection (a restart, a failover), waiting twice as long each time. Only for transactions
    that may run twice: a connection lost during COMMIT leaves it unknown whether it committed.
    Any other failure, or the last one, is raised: a lost connection once the budget is spent."""
    conflicts, lost_at, wait = 0, None, RECONNECT_BACKOFF_SECONDS[0]
    while True:
        try:
            return transaction()
        except SQLAlchemyError as error:
            kind = dialect.classify(error)
            if kind is ErrorKind.RETRY and conflicts + 1 < attempts:
                conflicts += 1
                time.sleep(0.01 * 2**conflicts)
                continue
            if kind is not ErrorKind.CONNECTION or reconnect_within <= 0:
                raise
            lost_at = time.monotonic() if lost_at is None else lost_at
            if time.monotonic() + wait - lost_at > reconnect_within:
                raise
            time.sleep(wait)
            wait = min(wait * 2, RECONNECT_BACKOFF_SECONDS[1])
