"""Data-quality checks over the aggregation rows of one period (what Dagster's asset checks run).

* ordering: min <= average <= max on every row. At the instance level the average of the daily
  totals is `total_size_mb` (`avg_size_mb` is a per-database size, compat Q4), and the database
  counts are checked too.
* counts: no negative count column.
* coverage: every active instance that has stats in the window has its row.
* no negative input: no sample in the window has a negative size or count. WhaleFall aggregates
  them without a word (an average of -500 MB, a change of -293.05 %); the check names the instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, Window
from capacity_pipeline.domain.samples.instances import active_instance_sql

_ORDERING = {
    Level.DATABASE: """
        SELECT instance_id, database_name AS name FROM database_size_aggregations
        WHERE period_type = :period_type AND period_start = :start
          AND NOT (min_size_mb <= avg_size_mb AND avg_size_mb <= max_size_mb
                   AND (avg_data_size_mb IS NULL
                        OR (min_data_size_mb <= avg_data_size_mb AND avg_data_size_mb <= max_data_size_mb)))
        ORDER BY instance_id, database_name""",
    Level.INSTANCE: """
        SELECT instance_id, NULL AS name FROM instance_size_aggregations
        WHERE period_type = :period_type AND period_start = :start
          AND NOT (min_size_mb <= total_size_mb AND total_size_mb <= max_size_mb
                   AND min_database_count <= avg_database_count
                   AND avg_database_count <= max_database_count)
        ORDER BY instance_id""",
}

_NEGATIVE_COUNTS = {
    Level.DATABASE: """
        SELECT instance_id, database_name AS name FROM database_size_aggregations
        WHERE period_type = :period_type AND period_start = :start AND data_count < 0
        ORDER BY instance_id, database_name""",
    Level.INSTANCE: """
        SELECT instance_id, NULL AS name FROM instance_size_aggregations
        WHERE period_type = :period_type AND period_start = :start
          AND (data_count < 0 OR database_count < 0 OR min_database_count < 0 OR max_database_count < 0)
        ORDER BY instance_id""",
}

_MISSING_TEMPLATE = {
    Level.DATABASE: """
        SELECT i.id AS instance_id, i.name FROM instances AS i
        WHERE {active}
          AND EXISTS (SELECT 1 FROM database_size_stats AS s
                      WHERE s.instance_id = i.id AND s.collected_date BETWEEN :start AND :end)
          AND NOT EXISTS (SELECT 1 FROM database_size_aggregations AS a
                          WHERE a.instance_id = i.id AND a.period_type = :period_type
                            AND a.period_start = :start)
        ORDER BY i.id""",
    Level.INSTANCE: """
        SELECT i.id AS instance_id, i.name FROM instances AS i
        WHERE {active}
          AND EXISTS (SELECT 1 FROM instance_size_stats AS s
                      WHERE s.instance_id = i.id AND s.is_deleted IS FALSE
                        AND s.collected_date BETWEEN :start AND :end)
          AND NOT EXISTS (SELECT 1 FROM instance_size_aggregations AS a
                          WHERE a.instance_id = i.id AND a.period_type = :period_type
                            AND a.period_start = :start)
        ORDER BY i.id""",
}

_MISSING = {level: sql.format(active=active_instance_sql("i")) for level, sql in _MISSING_TEMPLATE.items()}

# Samples in the window that cannot be true: any negative size, the log size included.
_NEGATIVE_INPUT_TEMPLATE = {
    Level.DATABASE: """
        SELECT s.instance_id, min(i.name) AS name FROM database_size_stats AS s
        JOIN instances AS i ON i.id = s.instance_id
        WHERE s.collected_date BETWEEN :start AND :end AND {active}
          AND (s.size_mb < 0 OR s.data_size_mb < 0 OR s.log_size_mb < 0)
        GROUP BY s.instance_id ORDER BY s.instance_id""",
    Level.INSTANCE: """
        SELECT s.instance_id, min(i.name) AS name FROM instance_size_stats AS s
        JOIN instances AS i ON i.id = s.instance_id
        WHERE s.collected_date BETWEEN :start AND :end AND s.is_deleted IS FALSE AND {active}
          AND (s.total_size_mb < 0 OR s.database_count < 0)
        GROUP BY s.instance_id ORDER BY s.instance_id""",
}
_NEGATIVE_INPUT = {
    level: sql.format(active=active_instance_sql("i")) for level, sql in _NEGATIVE_INPUT_TEMPLATE.items()
}

SAMPLE_SIZE = 20


@dataclass(frozen=True)
class CheckOutcome:
    """A check's verdict, how many rows broke it, and the first few of them (instance_id, name)."""

    violations: int
    sample: list[tuple[int, str | None]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.violations == 0


def _run(engine: Engine, sql: str, period_type: PeriodType, window: Window) -> CheckOutcome:
    params = {"period_type": period_type.value, "start": window.start, "end": window.end}
    with engine.connect() as connection:
        rows = [(row.instance_id, row.name) for row in connection.execute(text(sql), params)]
    return CheckOutcome(violations=len(rows), sample=rows[:SAMPLE_SIZE])


def check_min_avg_max(engine: Engine, level: Level, period_type: PeriodType, window: Window) -> CheckOutcome:
    return _run(engine, _ORDERING[level], period_type, window)


def check_no_negative_counts(engine: Engine, level: Level, period_type: PeriodType, window: Window) -> CheckOutcome:
    return _run(engine, _NEGATIVE_COUNTS[level], period_type, window)


def check_coverage(engine: Engine, level: Level, period_type: PeriodType, window: Window) -> CheckOutcome:
    return _run(engine, _MISSING[level], period_type, window)


def check_no_negative_input(engine: Engine, level: Level, period_type: PeriodType, window: Window) -> CheckOutcome:
    return _run(engine, _NEGATIVE_INPUT[level], period_type, window)
