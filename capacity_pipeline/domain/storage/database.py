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

from capacity_pipeline.domain.storage.dialects import ConnectionLimits, ErrorKind, SqlDialect, dialect_named, dialect_of

T = TypeVar("T")
WRITE_ATTEMPTS = 5  # a deadlock or serialization failure is retried this many times in all

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


def in_transaction(engine: Engine, work: Callable[[Connection], T], attempts: int = WRITE_ATTEMPTS) -> T:
    """Run `work` in one transaction, again on a deadlock or a serialization failure (see retrying)."""

    def once() -> T:
        with engine.begin() as connection:
            return work(connection)

    return retrying(dialect_of(engine), once, attempts)


def retrying(dialect: SqlDialect, transaction: Callable[[], T], attempts: int = WRITE_ATTEMPTS) -> T:
    """Run `transaction` again, after a short backoff, when the database reports a deadlock or a
    serialization failure: the transaction was rolled back whole, so running it again is safe.
    The last failure, or any other one, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return transaction()
        except SQLAlchemyError as error:
            if attempt == attempts or dialect.classify(error) is not ErrorKind.RETRY:
                raise
            time.sleep(0.01 * 2**attempt)
    raise AssertionError("unreachable")
