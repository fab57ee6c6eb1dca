"""The `whalefall` resource: WhaleFall's database and every setting a run needs, as typed fields.

The fields' values come from the `Settings` the definitions are built from (read once, when
Dagster loads the code location); the URL stays an EnvVar so that it never shows in the UI.
"""

from __future__ import annotations

from functools import cache

import dagster as dg
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from capacity_pipeline.domain.forecast.model import ForecastOptions, InvalidForecastInput
from capacity_pipeline.domain.storage.database import DatabaseConfigError, make_engine, normalise_url
from capacity_pipeline.domain.storage.dialects import ConnectionLimits, first_line
from capacity_pipeline.settings import SETTINGS, Settings, forecast_options_of

DATABASE_URL_ENV = SETTINGS["url"].env


@cache
def _engine_for(url: str, limits: ConnectionLimits) -> Engine:
    # One engine (and pool) per process, URL and limits: steps and sensor ticks reuse connections.
    return make_engine(normalise_url(url), limits)


class WhaleFallDatabase(dg.ConfigurableResource):
    """Where WhaleFall's tables live, and how runs treat them (README: Settings).

    The URL is a secret: it never reaches logs, tags or metadata.
    """

    url: str
    batch_size: int = SETTINGS["batch_size"].default
    batch_pause_seconds: float = SETTINGS["batch_pause_seconds"].default
    connect_timeout_seconds: float = SETTINGS["connect_timeout_seconds"].default
    statement_timeout_seconds: float = SETTINGS["statement_timeout_seconds"].default
    lock_timeout_seconds: float = SETTINGS["lock_timeout_seconds"].default
    heartbeat_seconds: float = SETTINGS["heartbeat_seconds"].default
    heartbeat_timeout_seconds: float = SETTINGS["heartbeat_timeout_seconds"].default
    trigger_pickup_timeout_seconds: float = SETTINGS["trigger_pickup_timeout_seconds"].default
    corrected_quarter: bool = SETTINGS["corrected_quarter"].default
    webserver_url: str = SETTINGS["webserver_url"].default
    observe_days: int = SETTINGS["observe_days"].default
    forecast_horizons: list[int] = list(SETTINGS["forecast_horizons"].default)
    forecast_history_days: int = SETTINGS["forecast_history_days"].default
    forecast_min_usable_days: int = SETTINGS["forecast_min_usable_days"].default
    forecast_max_days_to_limit: int = SETTINGS["forecast_max_days_to_limit"].default
    forecast_batch_size: int = SETTINGS["forecast_batch_size"].default

    @property
    def limits(self) -> ConnectionLimits:
        return ConnectionLimits(
            connect_timeout=self.connect_timeout_seconds,
            statement_timeout=self.statement_timeout_seconds,
            lock_timeout=self.lock_timeout_seconds,
        )

    def engine(self) -> Engine:
        """The process's engine for this database (a bad URL is a Failure that names the variable)."""
        try:
            return _engine_for(self.url, self.limits)
        except DatabaseConfigError as error:
            raise dg.Failure(description=str(error)) from None

    def connected_engine(self) -> Engine:
        """The engine, checked once: where a step starts, an unreachable database is a Failure that
        names WHALEFALL_DATABASE_URL (never the password) rather than a driver traceback."""
        engine = self.engine()
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as error:
            raise dg.Failure(
                description=f"{DATABASE_URL_ENV}: cannot connect to the WhaleFall database: {first_line(error)}"
            ) from None
        return engine

    def forecast_options(self) -> ForecastOptions:
        """The forecasts' options from this resource's fields (settings that do not fit together fail
        naming the field)."""
        try:
            return forecast_options_of(self)
        except InvalidForecastInput as error:
            raise dg.Failure(description=f"forecast settings: {error}") from None

    def run_url(self, dagster_run_id: str) -> dict[str, str]:
        """The run's id and its page in the Dagster UI, for the run center's summary."""
        return {
            "dagster_run_id": dagster_run_id,
            "dagster_run_url": f"{self.webserver_url.rstrip('/')}/runs/{dagster_run_id}",
        }


# The settings a run reads, as the resource's fields (the others shape the definitions themselves).
RESOURCE_SETTINGS = tuple(field for field in WhaleFallDatabase.model_fields if field != "url")


def whalefall_from_settings(settings: Settings) -> WhaleFallDatabase:
    """The resource with the run settings of `settings`; the URL is read from the environment when
    a run or tick uses it, so it never shows in the UI."""
    values = {name: getattr(settings, name) for name in RESOURCE_SETTINGS}
    return WhaleFallDatabase(url=dg.EnvVar(DATABASE_URL_ENV), **values)
