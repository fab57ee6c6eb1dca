"""Connecting to the WhaleFall database: URL rules, engine set-up, clear errors.

The project speaks to PostgreSQL through one driver, psycopg 3; users may write plain
`postgresql://` URLs. SQLite engines get the SQL functions the aggregation needs (see sqlmath).
"""

from __future__ import annotations

import os
import sqlite3

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from capacity_pipeline.domain import sqlmath

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


def url_from_env(explicit: str | None = None, option: str = "--db-url") -> URL:
    """The URL given explicitly (through `option`), else the one in WHALEFALL_DATABASE_URL."""
    if explicit:
        return normalise_url(explicit, source=option)
    raw = os.environ.get(DATABASE_URL_ENV, "")
    if not raw.strip():
        raise DatabaseConfigError(
            f"{DATABASE_URL_ENV} is not set: give the WhaleFall database URL "
            f"(for example postgresql://user@127.0.0.1:5432/whalefall) or pass {option}"
        )
    return normalise_url(raw)


def safe_url(url: URL | str) -> str:
    """The URL as it may appear in logs and messages: password hidden."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.render_as_string(hide_password=True)


def make_engine(url: URL | str, **kwargs: object) -> Engine:
    """An engine for the WhaleFall database, ready for the aggregation SQL on either dialect."""
    parsed = normalise_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _prepare_sqlite_connection)
        # pysqlite's own transaction handling would defer BEGIN; take the lock at BEGIN instead so
        # that two writers wait for each other rather than failing mid-transaction.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def _prepare_sqlite_connection(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" listener issues BEGIN itself
    dbapi_connection.execute("PRAGMA foreign_keys = ON")
    dbapi_connection.execute("PRAGMA journal_mode = WAL")
    dbapi_connection.execute("PRAGMA busy_timeout = 30000")
    sqlmath.register_sqlite_functions(dbapi_connection)
