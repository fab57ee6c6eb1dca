"""Sensors that outlive an unreachable WhaleFall database: one line per tick, and less and less often.

While the database cannot be used, a tick logs one clear line (never a traceback) and the next
try waits twice as long as the last, up to 5 minutes; the wait lives in the sensor's cursor, so a
daemon restart keeps it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
from sqlalchemy.exc import DBAPIError

from capacity_pipeline.domain.storage.dialects import first_line


class DatabaseUnavailable(Exception):
    """The WhaleFall database could not be used during a tick; the message is one line."""


@contextmanager
def _database_errors() -> Iterator[None]:
    """One clear line instead of a traceback per tick when the WhaleFall database is down."""
    try:
        yield
    except dg.Failure as failure:
        raise DatabaseUnavailable(failure.description or "the WhaleFall database is unavailable") from None
    except DBAPIError as error:
        raise DatabaseUnavailable(f"the WhaleFall database is unavailable: {first_line(error)}") from None


BACKOFF_LIMIT_SECONDS = 300


def guarded_tick(
    context: dg.SensorEvaluationContext, interval: int, tick: Callable[[], dg.SensorResult | dg.SkipReason]
) -> dg.SensorResult | dg.SkipReason:
    """Run a tick; while the WhaleFall database is unavailable, log one line per tick and wait twice
    as long after each failure (up to 5 minutes) before trying again. The wait lives in the cursor."""
    state = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    if state.get("retry_at", 0) > now:
        return dg.SkipReason(f"{state['error']}; next try in {state['retry_at'] - now:.0f} s")
    try:
        with _database_errors():
            result = tick()
    except DatabaseUnavailable as error:
        failures = state.get("failures", 0) + 1
        wait = min(interval * 2**failures, BACKOFF_LIMIT_SECONDS)
        context.update_cursor(json.dumps({"failures": failures, "retry_at": now + wait, "error": str(error)}))
        context.log.warning(f"{error}; next try in {wait} s")
        return dg.SkipReason(f"{error}; next try in {wait} s")
    if state:
        context.update_cursor(None)
    return result
