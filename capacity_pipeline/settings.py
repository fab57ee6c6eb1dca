"""Every setting of the pipeline in one table: its environment variable, type, default and meaning.

`Settings.from_env()` reads them all once, where a process starts (the Dagster definitions when
Dagster loads the code location, the command line, the API server); below that, settings travel
as one typed `Settings` value (the definitions are built from it, the `whalefall` resource's
fields come from it). A bad value fails with a message that names the variable and what it
accepts, never echoing a secret. The settings tables in docs/ and deploy/README.md are generated
from this table, and a test keeps them in step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from capacity_pipeline.domain.aggregation.engine import DEFAULT_BATCH_SIZE
from capacity_pipeline.domain.forecast.model import MAX_HISTORY_DAYS, ForecastOptions
from capacity_pipeline.domain.storage.database import DATABASE_URL_ENV
from capacity_pipeline.domain.storage.dialects import ConnectionLimits

_LIMITS = ConnectionLimits()  # the domain's own defaults, so each is written once
_FORECAST = ForecastOptions()


class SettingError(ValueError):
    """A setting's value cannot be used; the message names the variable and what it accepts."""


class InvalidValue(ValueError):
    """A parser's reason a value is refused, safe to show (it never quotes a secret)."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: Any
    parse: Callable[[str], Any]
    accepts: str
    meaning: str
    secret: bool = False


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not value >= 0:  # also refuses NaN
        raise ValueError
    return value


def _positive_seconds(raw: str) -> float:
    value = _seconds(raw)
    if value == 0:
        raise ValueError
    return value


def _minutes(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 59:
        raise ValueError
    return value


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError


def _horizons(raw: str) -> tuple[int, ...]:
    parts = [part.strip() for part in raw.split(",")]
    values = tuple(int(part) for part in parts)  # a part that is not a whole number raises ValueError
    if not values or len(set(values)) != len(values) or not all(1 <= value <= MAX_HISTORY_DAYS for value in values):
        raise ValueError
    return values


def _history_days(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= MAX_HISTORY_DAYS:
        raise ValueError
    return value


# One observation tick reads every sample of the observed days: at 1000 instances x 100 databases
# it took 1.2 s over 63 days, 3.1 s over 152 and 4.6 s over 214 (docs/freshness.md, "Measured").
# 186 (a range of 186 to 217 days: a whole quarter and its baseline) keeps a tick within about 5 s.
MAX_OBSERVE_DAYS = 186


def _observe_days(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= MAX_OBSERVE_DAYS:
        raise ValueError
    return value


def _url(raw: str) -> str:
    if not raw.strip():
        raise ValueError
    return raw.strip()


@dataclass(frozen=True)
class ApiToken:
    """Who a bearer token of the standalone API acts as."""

    user_id: int
    role: str


_MAX_USER_ID = 2**31 - 1  # WhaleFall's task_runs.created_by is an integer column


def _api_tokens(raw: str) -> dict[str, ApiToken]:
    """JSON {"<token>": {"user_id": 1, "role": "admin"}, ...}; a reason names the entry by its
    position, never by the token."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise InvalidValue("not valid JSON") from None
    if not isinstance(parsed, dict) or not parsed:
        raise InvalidValue("expected a non-empty JSON object of tokens")
    tokens = {}
    for position, (token, entry) in enumerate(parsed.items(), start=1):
        if not token.strip():
            raise InvalidValue(f"token {position} is blank")
        if not isinstance(entry, dict) or set(entry) != {"user_id", "role"}:
            raise InvalidValue(f"token {position}: expected exactly the keys user_id and role")
        user_id, role = entry["user_id"], entry["role"]
        # bool is an int in Python and 1.9 would truncate: only a JSON whole number is a user id.
        if type(user_id) is not int or not 1 <= user_id <= _MAX_USER_ID:
            raise InvalidValue(f"token {position}: user_id must be a whole number from 1 to {_MAX_USER_ID}")
        if not isinstance(role, str) or not role.strip():
            raise InvalidValue(f"token {position}: role must be a non-empty string")
        tokens[token] = ApiToken(user_id, role.strip())
    return tokens


SETTINGS: dict[str, Setting] = {
    "url": Setting(
        DATABASE_URL_ENV,
        None,
        _url,
        "postgresql://user@host:5432/db or sqlite:///path",
        "WhaleFall's database (its tables and the run center). Required.",
        secret=True,
    ),
    "batch_size": Setting(
        "CAPACITY_BATCH_SIZE",
        DEFAULT_BATCH_SIZE,
        _positive_int,
        "a whole number >= 1",
        "Instances per batch; each batch is one transaction per window.",
    ),
    "batch_pause_seconds": Setting(
        "CAPACITY_BATCH_PAUSE_SECONDS",
        0.0,
        _seconds,
        "seconds >= 0",
        "Pause between batches: leaves room to other work on a busy database.",
    ),
    "connect_timeout_seconds": Setting(
        "CAPACITY_CONNECT_TIMEOUT_SECONDS",
        _LIMITS.connect_timeout,
        _positive_seconds,
        "seconds > 0",
        "Longest wait for a database connection (a host that accepts TCP but never answers).",
    ),
    "statement_timeout_seconds": Setting(
        "CAPACITY_STATEMENT_TIMEOUT_SECONDS",
        _LIMITS.statement_timeout,
        _positive_seconds,
        "seconds > 0",
        "Longest any one statement may run (PostgreSQL statement_timeout).",
    ),
    "lock_timeout_seconds": Setting(
        "CAPACITY_LOCK_TIMEOUT_SECONDS",
        _LIMITS.lock_timeout,
        _positive_seconds,
        "seconds > 0",
        "Longest wait for a lock (PostgreSQL lock_timeout; SQLite's busy timeout).",
    ),
    "heartbeat_seconds": Setting(
        "CAPACITY_HEARTBEAT_SECONDS",
        10.0,
        _positive_seconds,
        "seconds > 0",
        "How often a running step heartbeats, reports lock waits and looks for cancels.",
    ),
    "heartbeat_timeout_seconds": Setting(
        "CAPACITY_HEARTBEAT_TIMEOUT_SECONDS",
        120.0,
        _positive_seconds,
        "seconds > 0",
        "A run silent this long is dead: failed in Dagster and in the run center.",
    ),
    "trigger_pickup_timeout_seconds": Setting(
        "CAPACITY_TRIGGER_PICKUP_TIMEOUT_SECONDS",
        300.0,
        _positive_seconds,
        "seconds > 0",
        "A request no Dagster daemon picked up within this time (on the database's clock) fails, saying so.",
    ),
    "corrected_quarter": Setting(
        "CAPACITY_CORRECTED_PREVIOUS_QUARTER",
        False,
        _flag,
        "1/true/yes/on or 0/false/no/off",
        "Compare quarters with the whole previous quarter (compat Q1 fix); off = WhaleFall's numbers.",
    ),
    "webserver_url": Setting(
        "DAGSTER_WEBSERVER_URL",
        "http://127.0.0.1:3000",
        _url,
        "a URL",
        "Where the Dagster UI is, for the run links written into the run center.",
    ),
    "automation": Setting(
        "CAPACITY_AUTOMATION",
        True,
        _flag,
        "1/true/yes/on or 0/false/no/off",
        "Re-aggregate by itself exactly the windows whose samples changed (off: nightly run, API and hand only).",
    ),
    "automate_current_periods": Setting(
        "CAPACITY_AUTOMATE_CURRENT_PERIODS",
        False,
        _flag,
        "1/true/yes/on or 0/false/no/off",
        "Also keep the current, partial week, month and quarter fresh (today's day always is).",
    ),
    "observe_minutes": Setting(
        "CAPACITY_OBSERVE_MINUTES",
        10,
        _minutes,
        "a whole number of minutes from 1 to 59",
        "How often the samples are observed for changes.",
    ),
    "observe_days": Setting(
        "CAPACITY_OBSERVE_DAYS",
        62,
        _observe_days,
        f"a whole number of days from 1 to {MAX_OBSERVE_DAYS}",
        "How far back changes to samples are noticed (days, from the first of that month).",
    ),
    "automation_sensor_seconds": Setting(
        "CAPACITY_AUTOMATION_SENSOR_SECONDS",
        30,
        _positive_int,
        "a whole number of seconds >= 1",
        "How often the automation sensor looks for changed samples.",
    ),
    "automation_max_queued": Setting(
        "CAPACITY_AUTOMATION_MAX_QUEUED",
        8,
        _positive_int,
        "a whole number >= 1",
        "The automation requests no run while this many background runs wait in the run queue (delayed, not lost).",
    ),
    "refresh_retries": Setting(
        "CAPACITY_REFRESH_RETRIES",
        3,
        _non_negative_int,
        "a whole number >= 0",
        "How many times a failed automated re-aggregation is run again (0: never).",
    ),
    "refresh_retry_seconds": Setting(
        "CAPACITY_REFRESH_RETRY_SECONDS",
        60,
        _positive_int,
        "a whole number of seconds >= 1",
        "Wait before the first retry of a failed automated re-aggregation; each next retry waits twice as long.",
    ),
    "api_tokens": Setting(
        "CAPACITY_API_TOKENS",
        None,
        _api_tokens,
        'JSON like {"<token>": {"user_id": 1, "role": "admin"}}',
        "Bearer tokens of the standalone API (serve-api).",
        secret=True,
    ),
    "forecast_horizons": Setting(
        "CAPACITY_FORECAST_HORIZONS",
        _FORECAST.horizons,
        _horizons,
        f"whole numbers of days from 1 to {MAX_HISTORY_DAYS}, comma separated, each once",
        "The horizons (days after the as-of day) each forecast projects to.",
    ),
    "forecast_history_days": Setting(
        "CAPACITY_FORECAST_HISTORY_DAYS",
        _FORECAST.history_days,
        _history_days,
        f"a whole number of days from 1 to {MAX_HISTORY_DAYS}",
        "How many days of samples up to the as-of day a forecast reads.",
    ),
    "forecast_min_usable_days": Setting(
        "CAPACITY_FORECAST_MIN_USABLE_DAYS",
        _FORECAST.min_usable_days,
        _positive_int,
        "a whole number >= 1",
        "Fewer samples after the last level shift: quality insufficient_data, no projection.",
    ),
    "forecast_max_days_to_limit": Setting(
        "CAPACITY_FORECAST_MAX_DAYS_TO_LIMIT",
        _FORECAST.max_days_to_limit,
        _positive_int,
        "a whole number of days >= 1",
        "A limit reached later than this many days after the as-of day is reported as not reached (null).",
    ),
    "forecast_batch_size": Setting(
        "CAPACITY_FORECAST_BATCH_SIZE",
        _FORECAST.batch_size,
        _positive_int,
        "a whole number >= 1",
        "Instances per forecast batch; each batch is read, fitted and stored in one transaction.",
    ),
    "partitions_start": Setting(
        "CAPACITY_PARTITIONS_START",
        date(2025, 7, 1),
        date.fromisoformat,
        "a date YYYY-MM-DD",
        "The first partition of every asset (moved back to the start of its period).",
    ),
}


def read_setting(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting's typed value: the environment's, else the default (None: required and unset)."""
    setting = SETTINGS[name]
    raw = (os.environ if environ is None else environ).get(setting.env)
    if raw is None or (not raw.strip() and setting.default is not None):
        return setting.default
    try:
        return setting.parse(raw)
    except InvalidValue as reason:
        shown = "(hidden)" if setting.secret else repr(raw)
        raise SettingError(f"{setting.env}: {shown} is not {setting.accepts} ({reason})") from None
    except ValueError:
        shown = "(hidden)" if setting.secret else repr(raw)
        raise SettingError(f"{setting.env}: {shown} is not {setting.accepts}") from None


def read_settings(names: tuple[str, ...] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Typed values of these settings (default: all)."""
    return {name: read_setting(name, environ) for name in names or tuple(SETTINGS)}


@dataclass(frozen=True)
class Settings:
    """Every setting's typed value: what a process read once where it started (or a test chose)."""

    url: str | None = SETTINGS["url"].default
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
    automation: bool = SETTINGS["automation"].default
    automate_current_periods: bool = SETTINGS["automate_current_periods"].default
    observe_minutes: int = SETTINGS["observe_minutes"].default
    observe_days: int = SETTINGS["observe_days"].default
    automation_sensor_seconds: int = SETTINGS["automation_sensor_seconds"].default
    automation_max_queued: int = SETTINGS["automation_max_queued"].default
    refresh_retries: int = SETTINGS["refresh_retries"].default
    refresh_retry_seconds: int = SETTINGS["refresh_retry_seconds"].default
    api_tokens: dict[str, ApiToken] | None = SETTINGS["api_tokens"].default
    forecast_horizons: tuple[int, ...] = SETTINGS["forecast_horizons"].default
    forecast_history_days: int = SETTINGS["forecast_history_days"].default
    forecast_min_usable_days: int = SETTINGS["forecast_min_usable_days"].default
    forecast_max_days_to_limit: int = SETTINGS["forecast_max_days_to_limit"].default
    forecast_batch_size: int = SETTINGS["forecast_batch_size"].default
    partitions_start: date = SETTINGS["partitions_start"].default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """All settings, read once from the environment (or `environ`)."""
        return cls(**read_settings(environ=environ))

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def forecast_options(self, **changes: Any) -> ForecastOptions:
        """The forecasts' options from these settings (`changes` override them, as a CLI option does);
        settings that do not fit together fail naming the field."""
        return forecast_options_of(self, **changes)


# Which setting gives each of the forecasts' options (the Dagster resource carries the same fields).
FORECAST_OPTION_SETTINGS = {
    "horizons": "forecast_horizons",
    "history_days": "forecast_history_days",
    "min_usable_days": "forecast_min_usable_days",
    "max_days_to_limit": "forecast_max_days_to_limit",
    "batch_size": "forecast_batch_size",
}


def forecast_options_of(values: Any, **changes: Any) -> ForecastOptions:
    """ForecastOptions from anything with the forecast settings as attributes (Settings, the resource)."""
    options = {option: getattr(values, name) for option, name in FORECAST_OPTION_SETTINGS.items()}
    options["horizons"] = tuple(options["horizons"])
    return ForecastOptions(**{**options, **changes})
