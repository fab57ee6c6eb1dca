"""The capacity aggregation engine: WhaleFall's numbers, computed set-based inside the database.

For each batch of active instances one transaction runs, per level, a single
`INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE` (spec sections 4 and 5). A batch that
fails is rolled back whole and retried one instance at a time, so that one bad instance fails
alone (fixes spec Q11) and committed batches stay committed. Between batches the caller's
checkpoint reports progress and may stop the run (cancellation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from capacity_pipeline.domain.partitions import ensure_month_partitions
from capacity_pipeline.domain.periods import PeriodType, Window, previous_window
from capacity_pipeline.domain.sqlmath import SqlMath

DEFAULT_BATCH_SIZE = 250


class Level(StrEnum):
    DATABASE = "database"
    INSTANCE = "instance"

    @property
    def table(self) -> str:
        return f"{self.value}_size_aggregations"


class Scope(StrEnum):
    """WhaleFall's scope names (spec 7.1): which levels a run aggregates."""

    ALL = "all"
    DATABASE = "database"
    INSTANCE = "instance"

    @classmethod
    def parse(cls, value: str) -> Scope:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(scope.value for scope in cls)
            raise ValueError(f"scope: unknown value {value!r}; allowed: {allowed}") from None

    @property
    def levels(self) -> tuple[Level, ...]:
        # Database level first, as WhaleFall's manual run does (spec 6.2 step 4).
        if self is Scope.ALL:
            return (Level.DATABASE, Level.INSTANCE)
        return (Level(self.value),)


@dataclass(frozen=True)
class ActiveInstance:
    id: int
    name: str


class Status(StrEnum):
    COMPLETED = "completed"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class InstanceOutcome:
    """What one run did for one instance."""

    instance: ActiveInstance
    rows_written: dict[Level, int] = field(default_factory=dict)
    # WhaleFall's processed_records (spec 4.3): database rows upserted; instance stats days read.
    records_read: dict[Level, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def status(self) -> Status:
        if self.error is not None:
            return Status.FAILED
        return Status.COMPLETED if any(self.rows_written.values()) else Status.SKIPPED

    def level_status(self, level: Level) -> Status:
        if self.error is not None:
            return Status.FAILED
        return Status.COMPLETED if self.rows_written.get(level, 0) else Status.SKIPPED


@dataclass
class AggregationReport:
    """The outcome of one aggregation run, instance by instance, in the order they were run."""

    period_type: PeriodType
    window: Window
    previous_window: Window
    scope: Scope
    instances_total: int
    outcomes: list[InstanceOutcome] = field(default_factory=list)
    batches_total: int = 0
    batches_done: int = 0
    stopped: bool = False
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status is status)

    def rows_written(self, level: Level) -> int:
        return sum(outcome.rows_written.get(level, 0) for outcome in self.outcomes)

    @property
    def instances_not_run(self) -> int:
        return self.instances_total - len(self.outcomes)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary for people and logs."""
        rows = {level.value: self.rows_written(level) for level in self.scope.levels}
        return {
            "period_type": self.period_type.value,
            "scope": self.scope.value,
            "window": {"start": self.window.start.isoformat(), "end": self.window.end.isoformat()},
            "previous_window": {
                "start": self.previous_window.start.isoformat(),
                "end": self.previous_window.end.isoformat(),
            },
            "instances": {
                "total": self.instances_total,
                "processed": self.count(Status.COMPLETED),
                "skipped": self.count(Status.SKIPPED),
                "failed": self.count(Status.FAILED),
                "not_run": self.instances_not_run,
            },
            "rows_written": {**rows, "total": sum(rows.values())},
            "failures": [
                {"instance_id": o.instance.id, "instance_name": o.instance.name, "error": o.error}
                for o in self.outcomes
                if o.error is not None
            ],
            "batches": {"done": self.batches_done, "total": self.batches_total},
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


# Called after every batch with the report so far and the batch's outcomes; False stops the run.
Checkpoint = Callable[[AggregationReport, Sequence[InstanceOutcome]], bool]


def list_active_instances(engine: Engine) -> list[ActiveInstance]:
    """WhaleFall's active instances (spec 1.1), in id order: one snapshot per run (spec Q20)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT id, name FROM instances "
                "WHERE is_active IS TRUE AND deleted_at IS NULL ORDER BY id"
            )
        )
        return [ActiveInstance(id=row.id, name=row.name) for row in rows]


def aggregate_period(
    engine: Engine,
    period_type: PeriodType,
    window: Window,
    *,
    scope: Scope = Scope.ALL,
    instances: Sequence[ActiveInstance] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: Checkpoint | None = None,
    corrected_quarter: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AggregationReport:
    """Aggregate one period window at the scope's levels for the given (default: active) instances."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    started = time.perf_counter()
    targets = list_active_instances(engine) if instances is None else list(instances)
    report = AggregationReport(
        period_type=period_type,
        window=window,
        previous_window=previous_window(period_type, window, corrected_quarter=corrected_quarter),
        scope=scope,
        instances_total=len(targets),
        batches_total=-(-len(targets) // batch_size),
    )
    if targets:
        ensure_month_partitions(engine, [level.table for level in scope.levels], [window.start])
    writer = _BatchWriter(engine, report, now)
    for first in range(0, len(targets), batch_size):
        batch_outcomes = writer.write(targets[first : first + batch_size])
        report.outcomes.extend(batch_outcomes)
        report.batches_done += 1
        report.seconds = time.perf_counter() - started
        if checkpoint is not None and checkpoint(report, batch_outcomes) is False:
            report.stopped = report.batches_done < report.batches_total
            break
    report.seconds = time.perf_counter() - started
    return report


class _BatchWriter:
    """Writes one batch per transaction; isolates a failing batch instance by instance."""

    def __init__(self, engine: Engine, report: AggregationReport, now: Callable[[], datetime]):
        self.engine = engine
        self.report = report
        self.now = now
        self.postgresql = engine.dialect.name == "postgresql"
        self.statements = {
            level: _STATEMENT_BUILDERS[level](SqlMath(engine.dialect.name))
            for level in report.scope.levels
        }

    def write(self, batch: Sequence[ActiveInstance]) -> list[InstanceOutcome]:
        try:
            return self._write_in_one_transaction(batch)
        except DBAPIError as error:
            if error.connection_invalidated:
                raise  # the database is gone: retrying instance by instance cannot help
            if len(batch) == 1:
                return [InstanceOutcome(batch[0], error=_describe(error))]
        except SQLAlchemyError as error:
            if len(batch) == 1:
                return [InstanceOutcome(batch[0], error=_describe(error))]
        return [outcome for instance in batch for outcome in self.write([instance])]

    def _write_in_one_transaction(self, batch: Sequence[ActiveInstance]) -> list[InstanceOutcome]:
        outcomes = {instance.id: InstanceOutcome(instance) for instance in batch}
        report = self.report
        parameters = {
            "ids": [instance.id for instance in batch],
            "period_type": report.period_type.value,
            "start": report.window.start,
            "end": report.window.end,
            "previous_start": report.previous_window.start,
            "previous_end": report.previous_window.end,
            "now": self.now(),
        }
        with self.engine.begin() as connection:
            for level, statement in self.statements.items():
                _lock_period(connection, level, report)
                result = connection.execute(statement, parameters)
                for instance_id, rows, records in _per_instance_counts(result, self.postgresql):
                    outcomes[instance_id].rows_written[level] = rows
                    outcomes[instance_id].records_read[level] = records
            for outcome in outcomes.values():
                for level in self.statements:
                    outcome.rows_written.setdefault(level, 0)
                    outcome.records_read.setdefault(level, 0)
        return list(outcomes.values())


def _per_instance_counts(result: Any, postgresql: bool) -> list[tuple[int, int, int]]:
    """(instance_id, rows written, records read) from an upsert statement's result."""
    if postgresql:
        return [tuple(row) for row in result]  # counted in SQL by the statement itself
    counts: dict[int, list[int]] = {}
    for instance_id, records in result:
        tally = counts.setdefault(instance_id, [0, 0])
        tally[0] += 1
        tally[1] += records
    return [(instance_id, rows, records) for instance_id, (rows, records) in counts.items()]


def _lock_period(connection: Connection, level: Level, report: AggregationReport) -> None:
    """Serialise concurrent writers of the same period and level (spec Q17) on PostgreSQL."""
    if connection.dialect.name != "postgresql":
        return  # SQLite takes a database-wide write lock at BEGIN IMMEDIATE
    key = f"capacity_pipeline.{level.table}.{report.period_type.value}.{report.window.start}"
    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def _describe(error: SQLAlchemyError) -> str:
    """The driver's own first line, without SQLAlchemy's statement dump (which can be huge)."""
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0] if str(original).strip() else type(error).__name__


def _upsert_counts(sql: SqlMath, insert: str, counted: str) -> str:
    """Run the upsert and return (instance_id, rows written, records read) per instance."""
    if sql.is_postgresql:
        return (
            f"{insert}\nRETURNING instance_id, {counted} AS records)\n"
            "SELECT instance_id, count(*), sum(records) FROM upserted GROUP BY instance_id"
        )
    # SQLite has no data-modifying CTE; the per-instance counts are made from RETURNING rows.
    return f"{insert}\nRETURNING instance_id, {counted} AS records"


def _database_level_statement(sql: SqlMath) -> Any:
    """Spec 4.1: one row per (instance, database) with stats in the window."""
    insert = f"""
    current_stats AS (
        SELECT instance_id, database_name,
               {sql.avg_truncated("size_mb")} AS avg_size_mb,
               max(size_mb) AS max_size_mb,
               min(size_mb) AS min_size_mb,
               count(id) AS data_count,
               {sql.avg_truncated("data_size_mb")} AS avg_data_size_mb,
               max(data_size_mb) AS max_data_size_mb,
               min(data_size_mb) AS min_data_size_mb
        FROM database_size_stats
        WHERE instance_id IN :ids AND collected_date BETWEEN :start AND :end
        GROUP BY instance_id, database_name
    ),
    previous_stats AS (
        SELECT instance_id, database_name,
               {sql.avg_as_float("size_mb")} AS previous_avg,
               {sql.avg_as_float("data_size_mb")} AS previous_data_avg
        FROM database_size_stats
        WHERE instance_id IN :ids AND collected_date BETWEEN :previous_start AND :previous_end
        GROUP BY instance_id, database_name
    ),
    changes AS (
        -- spec Q2: the truncated current average minus the exact previous average
        SELECT cur.*,
               prev.instance_id IS NOT NULL AS has_previous,
               prev.previous_avg,
               prev.previous_data_avg,
               {sql.as_float("cur.avg_size_mb")} - prev.previous_avg AS size_delta,
               {sql.as_float("cur.avg_data_size_mb")} - prev.previous_data_avg AS data_delta
        FROM current_stats AS cur
        LEFT JOIN previous_stats AS prev
          ON prev.instance_id = cur.instance_id AND prev.database_name = cur.database_name
    ),
    percents AS (
        SELECT changes.*,
               CASE WHEN previous_avg > 0
                    THEN size_delta / previous_avg * 100 END AS size_percent_raw,
               CASE WHEN previous_data_avg > 0
                    THEN data_delta / previous_data_avg * 100 END AS data_percent_raw
        FROM changes
    ),
    results AS (
        SELECT percents.*,
               CASE WHEN has_previous AND size_percent_raw IS NOT NULL
                    THEN {sql.py_round2("size_percent_raw")} ELSE 0 END AS size_change_percent,
               CASE WHEN has_previous AND data_percent_raw IS NOT NULL
                    THEN {sql.py_round2("data_percent_raw")} ELSE 0 END AS data_change_percent
        FROM percents
    )
    INSERT INTO database_size_aggregations (
        instance_id, database_name, period_type, period_start, period_end,
        avg_size_mb, max_size_mb, min_size_mb, data_count,
        avg_data_size_mb, max_data_size_mb, min_data_size_mb,
        avg_log_size_mb, max_log_size_mb, min_log_size_mb,
        size_change_mb, size_change_percent, data_size_change_mb, data_size_change_percent,
        log_size_change_mb, log_size_change_percent, growth_rate, calculated_at, created_at
    )
    SELECT instance_id, database_name, :period_type, :start, :end,
           avg_size_mb, max_size_mb, min_size_mb, data_count,
           avg_data_size_mb, max_data_size_mb, min_data_size_mb,
           NULL, NULL, NULL,  -- spec Q5: log sizes are never aggregated
           CASE WHEN has_previous THEN {sql.trunc_int("size_delta")} ELSE 0 END,
           size_change_percent,
           CASE WHEN has_previous AND data_delta IS NOT NULL
                THEN {sql.trunc_int("data_delta")} ELSE 0 END,
           data_change_percent,
           CASE WHEN has_previous THEN NULL ELSE 0 END,  -- spec Q5: NULL once there is history
           CASE WHEN has_previous THEN NULL ELSE 0 END,
           size_change_percent,
           :now, :now
    FROM results
    WHERE true
    ORDER BY instance_id, database_name
    ON CONFLICT (instance_id, database_name, period_type, period_start) DO UPDATE SET
        avg_size_mb = excluded.avg_size_mb,
        max_size_mb = excluded.max_size_mb,
        min_size_mb = excluded.min_size_mb,
        data_count = excluded.data_count,
        avg_data_size_mb = excluded.avg_data_size_mb,
        max_data_size_mb = excluded.max_data_size_mb,
        min_data_size_mb = excluded.min_data_size_mb,
        avg_log_size_mb = excluded.avg_log_size_mb,
        max_log_size_mb = excluded.max_log_size_mb,
        min_log_size_mb = excluded.min_log_size_mb,
        size_change_mb = excluded.size_change_mb,
        size_change_percent = excluded.size_change_percent,
        data_size_change_mb = excluded.data_size_change_mb,
        data_size_change_percent = excluded.data_size_change_percent,
        log_size_change_mb = excluded.log_size_change_mb,
        log_size_change_percent = excluded.log_size_change_percent,
        growth_rate = excluded.growth_rate,
        calculated_at = excluded.calculated_at"""
    return _statement(sql, insert, counted="1")


def _instance_level_statement(sql: SqlMath) -> Any:
    """Spec 4.2: one row per instance with live instance stats in the window."""
    insert = f"""
    current_days AS (
        SELECT instance_id, collected_date,
               sum(total_size_mb) AS day_total, sum(database_count) AS day_databases
        FROM instance_size_stats
        WHERE instance_id IN :ids AND collected_date BETWEEN :start AND :end
          AND is_deleted IS FALSE
        GROUP BY instance_id, collected_date
    ),
    current_stats AS (
        SELECT instance_id,
               count(*) AS days,
               sum(day_total) AS total_sum,
               sum(day_databases) AS databases_sum,
               max(day_total) AS max_size_mb,
               min(day_total) AS min_size_mb,
               max(day_databases) AS max_database_count,
               min(day_databases) AS min_database_count
        FROM current_days
        GROUP BY instance_id
    ),
    previous_days AS (
        SELECT instance_id, collected_date,
               sum(total_size_mb) AS day_total, sum(database_count) AS day_databases
        FROM instance_size_stats
        WHERE instance_id IN :ids AND collected_date BETWEEN :previous_start AND :previous_end
          AND is_deleted IS FALSE
        GROUP BY instance_id, collected_date
    ),
    previous_stats AS (
        SELECT instance_id,
               {sql.as_float("sum(day_total)")} / count(*) AS previous_total_mean,
               {sql.as_float("sum(day_databases)")} / count(*) AS previous_databases_mean
        FROM previous_days
        GROUP BY instance_id
    ),
    means AS (
        SELECT cur.*,
               {sql.trunc_int(sql.as_float("cur.total_sum") + " / cur.days")} AS total_size_mb,
               {sql.as_float("cur.databases_sum")} / cur.days AS databases_mean,
               prev.instance_id IS NOT NULL AS has_previous,
               prev.previous_total_mean,
               prev.previous_databases_mean
        FROM current_stats AS cur
        LEFT JOIN previous_stats AS prev ON prev.instance_id = cur.instance_id
    ),
    changes AS (
        -- spec Q2: the truncated current mean minus the exact previous mean; the database
        -- count change uses the full current mean (spec 4.2)
        SELECT means.*,
               {sql.as_float("total_size_mb")} - previous_total_mean AS total_delta,
               databases_mean - previous_databases_mean AS databases_delta
        FROM means
    ),
    percents AS (
        SELECT changes.*,
               CASE WHEN previous_total_mean > 0
                    THEN total_delta / previous_total_mean * 100 END AS total_percent_raw,
               CASE WHEN previous_databases_mean > 0
                    THEN databases_delta / previous_databases_mean * 100 END AS databases_percent_raw
        FROM changes
    ),
    results AS (
        SELECT percents.*,
               CASE WHEN has_previous AND total_percent_raw IS NOT NULL
                    THEN {sql.py_round2("total_percent_raw")} ELSE 0 END AS total_change_percent,
               CASE WHEN has_previous AND databases_percent_raw IS NOT NULL
                    THEN {sql.py_round2("databases_percent_raw")} ELSE 0 END
                    AS databases_change_percent
        FROM percents
    )
    INSERT INTO instance_size_aggregations (
        instance_id, period_type, period_start, period_end,
        total_size_mb, avg_size_mb, max_size_mb, min_size_mb, data_count,
        database_count, avg_database_count, max_database_count, min_database_count,
        total_size_change_mb, total_size_change_percent,
        database_count_change, database_count_change_percent,
        growth_rate, trend_direction, calculated_at, created_at
    )
    SELECT instance_id, :period_type, :start, :end,
           total_size_mb,
           -- spec Q4: the average size per database, not the average instance size
           CASE WHEN databases_sum > 0
                THEN {sql.trunc_int(sql.as_float("total_sum") + " / databases_sum")} ELSE 0 END,
           max_size_mb, min_size_mb,
           days,  -- spec Q4: distinct days, not rows
           {sql.trunc_int("databases_mean")},
           {sql.pg_numeric2("databases_mean")},  -- spec Q3: rounded by PostgreSQL, half up
           max_database_count, min_database_count,
           CASE WHEN has_previous THEN {sql.trunc_int("total_delta")} ELSE 0 END,
           total_change_percent,
           CASE WHEN has_previous THEN {sql.trunc_int("databases_delta")} ELSE 0 END,
           databases_change_percent,
           total_change_percent,
           -- strict comparison of the rounded percent: exactly 5.00 is stable
           CASE WHEN total_change_percent > 5 THEN 'growing'
                WHEN total_change_percent < -5 THEN 'shrinking'
                ELSE 'stable' END,
           :now, :now
    FROM results
    WHERE true
    ORDER BY instance_id
    ON CONFLICT (instance_id, period_type, period_start) DO UPDATE SET
        total_size_mb = excluded.total_size_mb,
        avg_size_mb = excluded.avg_size_mb,
        max_size_mb = excluded.max_size_mb,
        min_size_mb = excluded.min_size_mb,
        data_count = excluded.data_count,
        database_count = excluded.database_count,
        avg_database_count = excluded.avg_database_count,
        max_database_count = excluded.max_database_count,
        min_database_count = excluded.min_database_count,
        total_size_change_mb = excluded.total_size_change_mb,
        total_size_change_percent = excluded.total_size_change_percent,
        database_count_change = excluded.database_count_change,
        database_count_change_percent = excluded.database_count_change_percent,
        growth_rate = excluded.growth_rate,
        trend_direction = excluded.trend_direction,
        calculated_at = excluded.calculated_at"""
    return _statement(sql, insert, counted="data_count")


def _statement(sql: SqlMath, insert_body: str, counted: str) -> Any:
    if sql.is_postgresql:
        body = f"WITH upserted AS (WITH {insert_body.strip()}"
    else:
        body = f"WITH {insert_body.strip()}"
    return text(_upsert_counts(sql, body, counted)).bindparams(bindparam("ids", expanding=True))


_STATEMENT_BUILDERS = {
    Level.DATABASE: _database_level_statement,
    Level.INSTANCE: _instance_level_statement,
}
