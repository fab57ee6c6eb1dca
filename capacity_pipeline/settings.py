"""Every setting of the pipeline in one table: its environment variable, type, default and meaning.

Read once, where a process starts (the Dagster definitions, the command line, the API server);
below that, settings travel as typed values (the `whalefall` resource's fields, function
arguments). A bad value fails with a message that names the variable and what it accepts. The
README's settings table is this table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from capacity_pipeline.domain.aggregation.engine import DEFAULT_BATCH_SIZE
from capacity_pipeline.domain.storage.database import DATABASE_URL_ENV
from capacity_pipeline.domain.storage.dialects import ConnectionLimits

_LIMITS = ConnectionLimits()  # the domain's own defaults, so each is written once


class SettingError(ValueError):
    """A setting's value cannot be used; the message names the variable and what it accepts."""


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


def _url(raw: str) -> str:
    if not raw.strip():
        raise ValueError
    return raw.strip()


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
        "A request no Dagster daemon picked up within this time fails, saying so.",
    ),
    "corrected_quarter": Setting(
        "CAPACITY_CORRECTED_PREVIOUS_QUARTER",
        False,
        _flag,
        "1/true/yes/on or 0/false/no/off",
        "Compare quarters with the whole previous quarter (spec Q1 fix); off = WhaleFall's numbers.",
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
        _positive_int,
        "a whole number >= 1",
        "How far back changes to samples are noticed (days, from the first of that month).",
    ),
    "automation_sensor_seconds": Setting(
        "CAPACITY_AUTOMATION_SENSOR_SECONDS",
        30,
        _positive_int,
        "a whole number of seconds >= 1",
        "How often the automation sensor looks for changed samples.",
    ),
    "api_tokens": Setting(
        "CAPACITY_API_TOKENS",
        None,
        _url,
        'JSON like {"<token>": {"user_id": 1, "role": "admin"}}',
        "Bearer tokens of the standalone API (serve-api).",
        secret=True,
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
    except ValueError:
        shown = "(hidden)" if setting.secret else repr(raw)
        raise SettingError(f"{setting.env}: {shown} is not {setting.accepts}") from None


def read_settings(names: tuple[str, ...] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Typed values of these settings (default: all)."""
    return {name: read_setting(name, environ) for name in names or tuple(SETTINGS)}
