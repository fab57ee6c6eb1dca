"""The WhaleFall database as a Dagster resource, configured from WHALEFALL_DATABASE_URL."""

from __future__ import annotations

import os
from functools import cache

import dagster as dg
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from capacity_pipeline.domain.aggregation import DEFAULT_BATCH_SIZE
from capacity_pipeline.domain.database import (
    DATABASE_URL_ENV,
    DatabaseConfigError,
    make_engine,
    normalise_url,
)


@cache
def _engine_for(url: str) -> Engine:
    # One engine (and pool) per process and URL: steps and sensor ticks reuse connections.
    return make_engine(normalise_url(url))


class WhaleFallDatabase(dg.ConfigurableResource):
    """Where WhaleFall's tables live. The URL is a secret: it never reaches logs, tags or metadata.

    `batch_size` instances go into one transaction; `batch_pause_seconds` waits between batches
    (a throttle that leaves room to other work on a busy production database).
    """

    url: str
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_pause_seconds: float = 0.0

    def engine(self) -> Engine:
        """A connected engine, or a Failure that names WHALEFALL_DATABASE_URL (never the password)."""
        try:
            engine = _engine_for(self.url)
        except DatabaseConfigError as error:
            raise dg.Failure(description=str(error)) from None
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as error:
            first_line = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else ""
            raise dg.Failure(
                description=f"{DATABASE_URL_ENV}: cannot connect to the WhaleFall database: {first_line}"
            ) from None
        return engine


def whalefall_from_env() -> WhaleFallDatabase:
    """URL from WHALEFALL_DATABASE_URL (resolved at run time); throttles from CAPACITY_BATCH_*."""
    return WhaleFallDatabase(
        url=dg.EnvVar(DATABASE_URL_ENV),
        batch_size=int(os.environ.get("CAPACITY_BATCH_SIZE", DEFAULT_BATCH_SIZE)),
        batch_pause_seconds=float(os.environ.get("CAPACITY_BATCH_PAUSE_SECONDS", 0)),
    )
