"""The WhaleFall database as a Dagster resource, configured from WHALEFALL_DATABASE_URL."""

from __future__ import annotations

from functools import cache

import dagster as dg
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

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
    """Where WhaleFall's tables live. The URL is a secret: it never reaches logs, tags or metadata."""

    url: str

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
    return WhaleFallDatabase(url=dg.EnvVar(DATABASE_URL_ENV))
