"""The capacity aggregation engine: WhaleFall's numbers, computed set-based inside the database.

For each batch of active instances one transaction runs, per level, one GROUP BY over the
current and previous windows together and one `INSERT ... ON CONFLICT DO UPDATE` of the result
(spec sections 4 and 5); on PostgreSQL the rows are computed by a parallel-capable
`CREATE TEMP TABLE ... AS` first, SQLite does it in one `INSERT ... SELECT`. A batch that fails
is rolled back whole and retried one instance at a time, so that one bad instance fails alone
(fixes spec Q11) and committed batches stay committed. Between batches the caller's checkpoint
reports progress and may stop the run (cancellation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, bindparam, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from capacity_pipeline.domain.partitions import ensure_month_partitions
from capacity_pipeline.domain.periods import PeriodType, Window, previous_window
from capacity_pipeline.domain.sqlmath import SqlMath
from capacity_pipeline.domain.tables import whalefall_metadata

DEFAULT_BATCH_SIZE = 250

# Per batch transaction: a batch's GROUP BYs fit in memory instead of spilling to disk, and
# sub-second statements do not pay JIT compilation, which costs more than it saves here.
_POSTGRESQL_BATCH_SETTINGS = ("work_mem = '64MB'", "jit = off")


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

    @classmethod
    def merge(cls, reports: Sequence[AggregationReport]) -> AggregationReport:
        """One report for a window that was run in several calls (batches of instances)."""
        first = reports[0]
        return cls(
            period_type=first.period_type,
            window=first.window,
            previous_window=first.previous_window,
            scope=first.scope,
            instances_total=sum(r.instances_total for r in reports),
            outcomes=[outcome for r in reports for outcome in r.outcomes],
            batches_total=sum(r.batches_total for r in reports),
            batches_done=sum(r.batches_done for r in reports),
            stopped=any(r.stopped for r in reports),
            seconds=sum(r.seconds for r in reports),
        )

    def count(self, status: Status) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

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


def list_active_instances(bind: Engine | Connection) -> list[ActiveInstance]:
    """WhaleFall's active instances (spec 1.1), in id order: one snapshot per run (spec Q20)."""
    query = text("SELECT id, name FROM instances WHERE is_active IS TRUE AND deleted_at IS NULL ORDER BY id")
    if isinstance(bind, Connection):
        return [ActiveInstance(id=row.id, name=row.name) for row in bind.execute(query)]
    with bind.connect() as connection:
        return list_active_instances(connection)


def aggregate_period(
    engine: Engine,
    period_type: PeriodType,
    window: Window,
    *,
    scope: Scope = Scope.ALL,
    instances: Sequence[ActiveInstance] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: Checkpoint | None = None,
    before_batch: Callable[[Sequence[ActiveInstance]], None] | None = None,
    corrected_quarter: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AggregationReport:
    """Aggregate one period window at the scope's levels for the given (default: active) instances.

    `before_batch` is told which instances a batch is about to write; `checkpoint` runs after
    each batch and stops the run by returning False.
    """
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
        batch = targets[first : first + batch_size]
        if before_batch is not None:
            before_batch(batch)
        batch_outcomes = writer.write(batch)
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
        self.statements = {level: _statements(engine.dialect.name, level) for level in report.scope.levels}

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
            if self.postgresql:
                for setting in _POSTGRESQL_BATCH_SETTINGS:
                    connection.exec_driver_sql(f"SET LOCAL {setting}")
            for level, statements in self.statements.items():
                _lock_period(connection, level, report)
                for statement in statements[:-1]:
                    connection.execute(statement, parameters)
                result = connection.execute(statements[-1], parameters)
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
        # counted in SQL; PostgreSQL's sum() of integers is numeric, hence int()
        return [(int(instance_id), int(rows), int(records)) for instance_id, rows, records in result]
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


def _database_level(sql: SqlMath) -> _LevelSql:
    """Spec 4.1: one row per (instance, database) with stats in the window."""
    window_columns, timestamp_columns = _window_columns(sql), _timestamp_columns(sql)
    in_batch = _in_batch(sql)
    ctes = f"""
    window_rows AS (
        -- One pass over both windows (the previous one always ends before the current starts).
        SELECT instance_id, database_name, id, size_mb, data_size_mb,
               collected_date >= :start AS is_current
        FROM database_size_stats
        WHERE {in_batch}
          AND (collected_date BETWEEN :start AND :end
               OR collected_date BETWEEN :previous_start AND :previous_end)
    ),
    stats AS (
        SELECT instance_id, database_name,
               {sql.avg_truncated("size_mb", "is_current")} AS avg_size_mb,
               max(size_mb) FILTER (WHERE is_current) AS max_size_mb,
               min(size_mb) FILTER (WHERE is_current) AS min_size_mb,
               count(id) FILTER (WHERE is_current) AS data_count,
               {sql.avg_truncated("data_size_mb", "is_current")} AS avg_data_size_mb,
               max(data_size_mb) FILTER (WHERE is_current) AS max_data_size_mb,
               min(data_size_mb) FILTER (WHERE is_current) AS min_data_size_mb,
               count(id) FILTER (WHERE NOT is_current) > 0 AS has_previous,
               {sql.avg_as_float("size_mb", "NOT is_current")} AS previous_avg,
               {sql.avg_as_float("data_size_mb", "NOT is_current")} AS previous_data_avg
        FROM window_rows
        GROUP BY instance_id, database_name
        HAVING count(id) FILTER (WHERE is_current) > 0
    ),
    changes AS (
        -- spec Q2: the truncated current average minus the exact previous average
        SELECT stats.*,
               {sql.as_float("avg_size_mb")} - previous_avg AS size_delta,
               {sql.as_float("avg_data_size_mb")} - previous_data_avg AS data_delta
        FROM stats
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
    )"""
    final = f"""
    SELECT instance_id, database_name, {window_columns},
           avg_size_mb, max_size_mb, min_size_mb, data_count,
           avg_data_size_mb, max_data_size_mb, min_data_size_mb,
           -- spec Q5: log sizes are never aggregated
           CAST(NULL AS bigint) AS avg_log_size_mb,
           CAST(NULL AS bigint) AS max_log_size_mb,
           CAST(NULL AS bigint) AS min_log_size_mb,
           CASE WHEN has_previous THEN {sql.trunc_int("size_delta")} ELSE 0 END AS size_change_mb,
           size_change_percent,
           CASE WHEN has_previous AND data_delta IS NOT NULL
                THEN {sql.trunc_int("data_delta")} ELSE 0 END AS data_size_change_mb,
           data_change_percent AS data_size_change_percent,
           -- spec Q5: the log changes are 0 without history and NULL with it
           CASE WHEN has_previous THEN NULL ELSE 0 END AS log_size_change_mb,
           CASE WHEN has_previous THEN NULL ELSE 0 END AS log_size_change_percent,
           size_change_percent AS growth_rate,
           {timestamp_columns}
    FROM results
"""
    return _LevelSql(Level.DATABASE, ctes, final, keys=("instance_id", "database_name"), records_read="1")


def _instance_level(sql: SqlMath) -> _LevelSql:
    """Spec 4.2: one row per instance with live instance stats in the window."""
    window_columns, timestamp_columns = _window_columns(sql), _timestamp_columns(sql)
    in_batch = _in_batch(sql)
    ctes = f"""
    days AS (
        -- Rows of one day are summed first (spec 4.2); one pass over both windows.
        SELECT instance_id, collected_date >= :start AS is_current,
               sum(total_size_mb) AS day_total, sum(database_count) AS day_databases
        FROM instance_size_stats
        WHERE {in_batch} AND is_deleted IS FALSE
          AND (collected_date BETWEEN :start AND :end
               OR collected_date BETWEEN :previous_start AND :previous_end)
        GROUP BY instance_id, collected_date
    ),
    stats AS (
        SELECT instance_id,
               count(*) FILTER (WHERE is_current) AS days,
               sum(day_total) FILTER (WHERE is_current) AS total_sum,
               sum(day_databases) FILTER (WHERE is_current) AS databases_sum,
               max(day_total) FILTER (WHERE is_current) AS max_size_mb,
               min(day_total) FILTER (WHERE is_current) AS min_size_mb,
               max(day_databases) FILTER (WHERE is_current) AS max_database_count,
               min(day_databases) FILTER (WHERE is_current) AS min_database_count,
               count(*) FILTER (WHERE NOT is_current) AS previous_days,
               sum(day_total) FILTER (WHERE NOT is_current) AS previous_total_sum,
               sum(day_databases) FILTER (WHERE NOT is_current) AS previous_databases_sum
        FROM days
        GROUP BY instance_id
        HAVING count(*) FILTER (WHERE is_current) > 0
    ),
    means AS (
        SELECT stats.*,
               {sql.trunc_int(sql.as_float("total_sum") + " / days")} AS total_size_mb,
               {sql.as_float("databases_sum")} / days AS databases_mean,
               previous_days > 0 AS has_previous,
               {sql.as_float("previous_total_sum")} / NULLIF(previous_days, 0) AS previous_total_mean,
               {sql.as_float("previous_databases_sum")} / NULLIF(previous_days, 0)
                   AS previous_databases_mean
        FROM stats
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
    )"""
    final = f"""
    SELECT instance_id, {window_columns},
           total_size_mb,
           -- spec Q4: the average size per database, not the average instance size
           CASE WHEN databases_sum > 0
                THEN {sql.trunc_int(sql.as_float("total_sum") + " / databases_sum")} ELSE 0 END
                AS avg_size_mb,
           max_size_mb, min_size_mb,
           days AS data_count,  -- spec Q4: distinct days, not rows
           {sql.trunc_int("databases_mean")} AS database_count,
           -- spec Q3: rounded by PostgreSQL, half away from zero
           {sql.pg_numeric2("databases_mean")} AS avg_database_count,
           max_database_count, min_database_count,
           CASE WHEN has_previous THEN {sql.trunc_int("total_delta")} ELSE 0 END
                AS total_size_change_mb,
           total_change_percent AS total_size_change_percent,
           CASE WHEN has_previous THEN {sql.trunc_int("databases_delta")} ELSE 0 END
                AS database_count_change,
           databases_change_percent AS database_count_change_percent,
           total_change_percent AS growth_rate,
           -- strict comparison of the rounded percent: exactly 5.00 is stable
           CASE WHEN total_change_percent > 5 THEN 'growing'
                WHEN total_change_percent < -5 THEN 'shrinking'
                ELSE 'stable' END AS trend_direction,
           {timestamp_columns}
    FROM results
"""
    return _LevelSql(Level.INSTANCE, ctes, final, keys=("instance_id",), records_read="data_count")


def _in_batch(sql: SqlMath) -> str:
    """The batch's instances: one array parameter on PostgreSQL, an expanded IN list on SQLite."""
    return "instance_id = ANY(:ids)" if sql.is_postgresql else "instance_id IN :ids"


def _window_columns(sql: SqlMath) -> str:
    if sql.is_postgresql:  # typed, so that CREATE TABLE AS gets the target's column types
        return (
            "CAST(:period_type AS varchar(20)) AS period_type, "
            "CAST(:start AS date) AS period_start, CAST(:end AS date) AS period_end"
        )
    return ":period_type AS period_type, :start AS period_start, :end AS period_end"


def _timestamp_columns(sql: SqlMath) -> str:
    if sql.is_postgresql:
        return "CAST(:now AS timestamptz) AS calculated_at, CAST(:now AS timestamptz) AS created_at"
    return ":now AS calculated_at, :now AS created_at"


@dataclass(frozen=True)
class _LevelSql:
    """One level's computation (CTEs and a final SELECT of target columns) and how it is upserted.

    On PostgreSQL the rows are computed by CREATE TEMP TABLE AS, which may use parallel workers
    (an INSERT ... SELECT never does), then upserted from the temporary table. SQLite runs one
    INSERT ... SELECT.
    """

    level: Level
    ctes: str
    final: str
    keys: tuple[str, ...]  # with period_type and period_start, the unique constraint
    records_read: str  # WhaleFall's processed_records, over a computed row

    def statements(self, sql: SqlMath) -> list[TextClause]:
        table = self.level.table
        columns = [c.name for c in whalefall_metadata(sql.dialect).tables[table].columns if c.name != "id"]
        column_list = ", ".join(columns)
        conflict = ", ".join((*self.keys, "period_type", "period_start"))
        kept = {*self.keys, "period_type", "period_start", "period_end", "created_at"}  # spec 5
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in kept)
        # No ORDER BY: writers of one period and level are serialised by an advisory lock.
        upsert = (
            f"INSERT INTO {table} ({column_list}) SELECT {column_list} FROM {{source}} WHERE true "
            f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
        )
        if sql.is_postgresql:
            temporary = f"capacity_batch_{self.level.value}"
            compute = f"CREATE TEMP TABLE {temporary} ON COMMIT DROP AS WITH {self.ctes} {self.final}"
            # Every computed row is written (inserted or updated), so the counts come from them.
            counts = f"SELECT instance_id, count(*), sum({self.records_read}) FROM {temporary} GROUP BY instance_id"
            return [text(compute), text(upsert.format(source=temporary)), text(counts)]
        write = (
            f"WITH {self.ctes}, batch_rows AS ({self.final}) {upsert.format(source='batch_rows')} "
            f"RETURNING instance_id, {self.records_read} AS records"
        )
        return [text(write).bindparams(bindparam("ids", expanding=True))]


@cache
def _statements(dialect: str, level: Level) -> tuple[TextClause, ...]:
    """A level's statements, built once per dialect (the nightly job calls the engine per batch)."""
    sql = SqlMath(dialect)
    return tuple(_LEVEL_BUILDERS[level](sql).statements(sql))


_LEVEL_BUILDERS = {
    Level.DATABASE: _database_level,
    Level.INSTANCE: _instance_level,
}
