"""Reading the forecasts' series: set-based, a batch of instances at a time, only samples dated on or
before the as-of day, into the method's 2-D arrays (series x days, NaN where a day has no sample).

Instance level: `instance_size_stats.total_size_mb` of live rows (is_deleted false); database level:
`database_size_stats.size_mb`; both of active instances only (WhaleFall's rule, applied when the
batches are listed). Each batch is one
query; how its rows reach numpy is the dialect's business (PostgreSQL packs each series into one
value), so memory follows the batch, not the table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
from sqlalchemy import Connection, Engine

from capacity_pipeline.domain.forecast.model import InvalidForecastInput, SeriesKey
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.samples.instances import list_active_instances
from capacity_pipeline.domain.storage.dialects import DAY_BITS, dialect_of


@dataclass(frozen=True)
class SeriesBatch:
    """The series of a batch of instances: row i of `values` is `keys[i]`, column 0 is `first_day`."""

    instance_ids: tuple[int, ...]
    keys: list[SeriesKey]
    values: np.ndarray  # (len(keys), days) float64, NaN = no sample that day
    first_day: date

    @property
    def as_of(self) -> date:
        return self.first_day + timedelta(days=self.values.shape[1] - 1)

    def day(self, column: int) -> date:
        return self.first_day + timedelta(days=int(column))


def _samples_sql(level: Level, in_batch: str, day: str) -> str:
    """(instance_id, database_name, day, size_mb) of the batch's live samples in [first, as_of]."""
    if level is Level.INSTANCE:
        return f"""
            SELECT instance_id, CAST(NULL AS varchar(255)) AS database_name, {day} AS day, total_size_mb AS size_mb
            FROM instance_size_stats
            WHERE {in_batch} AND collected_date BETWEEN :first AND :as_of AND is_deleted IS FALSE"""
    return f"""
        SELECT instance_id, database_name, {day} AS day, size_mb
        FROM database_size_stats
        WHERE {in_batch} AND collected_date BETWEEN :first AND :as_of"""


def read_series(
    connection: Connection, level: Level, instance_ids: Sequence[int], as_of: date, history_days: int
) -> SeriesBatch:
    """The series of these instances at `level`, over the `history_days` days ending on `as_of`.

    The instances are taken as given: `instance_batches` applies WhaleFall's active-instance rule
    once per computation, so the samples' query needs no join per sample.
    """
    if not 1 <= history_days <= 2**DAY_BITS:
        raise InvalidForecastInput(f"history_days: expected 1 to {2**DAY_BITS} days, got {history_days}")
    dialect = dialect_of(connection)
    first = as_of - timedelta(days=history_days - 1)
    samples = _samples_sql(level, dialect.in_batch(), dialect.day_offset("collected_date", "first"))
    ids = list(instance_ids)
    read = dialect.daily_series(connection, samples, {"ids": ids, "first": first, "as_of": as_of})
    # One order whatever the dialect handed back: instance, then database name.
    order = sorted(range(len(read.keys)), key=lambda i: (read.keys[i][0], read.keys[i][1] or ""))
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    values = np.full((len(order), history_days), np.nan)
    values[position[read.index], read.day] = read.size
    keys = [SeriesKey(int(read.keys[i][0]), read.keys[i][1]) for i in order]
    return SeriesBatch(tuple(ids), keys, values, first)


def instance_batches(
    bind: Engine | Connection, batch_size: int, instance_ids: Sequence[int] | None = None
) -> Iterator[tuple[int, ...]]:
    """The active instances (or those of `instance_ids` that are active), `batch_size` at a time."""
    active = [instance.id for instance in list_active_instances(bind)]
    if instance_ids is not None:
        wanted = set(instance_ids)
        active = [instance_id for instance_id in active if instance_id in wanted]
    for start in range(0, len(active), batch_size):
        yield tuple(active[start : start + batch_size])
