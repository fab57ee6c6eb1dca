"""The SQL of each aggregation level: WhaleFall's formulas (compat 4.1, 4.2) as one statement set.

Each level reads the current and the previous window in one pass (a GROUP BY with FILTERed
aggregates), applies the change arithmetic with the dialect's exact Python-equivalent fragments,
and upserts with ON CONFLICT DO UPDATE, keeping id, created_at and period_end (compat 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from sqlalchemy import TextClause

from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.storage.dialects import SqlDialect, dialect_named
from capacity_pipeline.domain.storage.tables import whalefall_metadata


def _database_level(sql: SqlDialect) -> _LevelSql:
    """Spec 4.1: one row per (instance, database) with stats in the window."""
    window_columns, timestamp_columns, in_batch = sql.window_columns(), sql.timestamp_columns(), sql.in_batch()
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
        -- compat Q2: the truncated current average minus the exact previous average
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
           -- compat Q5: log sizes are never aggregated
           CAST(NULL AS bigint) AS avg_log_size_mb,
           CAST(NULL AS bigint) AS max_log_size_mb,
           CAST(NULL AS bigint) AS min_log_size_mb,
           CASE WHEN has_previous THEN {sql.trunc_int("size_delta")} ELSE 0 END AS size_change_mb,
           size_change_percent,
           CASE WHEN has_previous AND data_delta IS NOT NULL
                THEN {sql.trunc_int("data_delta")} ELSE 0 END AS data_size_change_mb,
           data_change_percent AS data_size_change_percent,
           -- compat Q5: the log changes are 0 without history and NULL with it
           CASE WHEN has_previous THEN NULL ELSE 0 END AS log_size_change_mb,
           CASE WHEN has_previous THEN NULL ELSE 0 END AS log_size_change_percent,
           size_change_percent AS growth_rate,
           {timestamp_columns}
    FROM results
"""
    return _LevelSql(Level.DATABASE, ctes, final, keys=("instance_id", "database_name"), records_read="1")


def _instance_level(sql: SqlDialect) -> _LevelSql:
    """Spec 4.2: one row per instance with live instance stats in the window."""
    window_columns, timestamp_columns, in_batch = sql.window_columns(), sql.timestamp_columns(), sql.in_batch()
    ctes = f"""
    days AS (
        -- Rows of one day are summed first (compat 4.2); one pass over both windows.
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
        -- compat Q2: the truncated current mean minus the exact previous mean; the database
        -- count change uses the full current mean (compat 4.2)
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
           -- compat Q4: the average size per database, not the average instance size
           CASE WHEN databases_sum > 0
                THEN {sql.trunc_int(sql.as_float("total_sum") + " / databases_sum")} ELSE 0 END
                AS avg_size_mb,
           max_size_mb, min_size_mb,
           days AS data_count,  -- compat Q4: distinct days, not rows
           {sql.trunc_int("databases_mean")} AS database_count,
           -- compat Q3: rounded by PostgreSQL, half away from zero
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


@dataclass(frozen=True)
class _LevelSql:
    """One level's computation (CTEs and a final SELECT of target columns) and how it is upserted
    (the dialect decides the statements: see SqlDialect.upsert_statements)."""

    level: Level
    ctes: str
    final: str
    keys: tuple[str, ...]  # with period_type and period_start, the unique constraint
    records_read: str  # WhaleFall's processed_records, over a computed row

    def statements(self, sql: SqlDialect) -> tuple[TextClause, ...]:
        table = self.level.table
        columns = [c.name for c in whalefall_metadata(sql.name).tables[table].columns if c.name != "id"]
        column_list = ", ".join(columns)
        conflict = ", ".join((*self.keys, "period_type", "period_start"))
        kept = {*self.keys, "period_type", "period_start", "period_end", "created_at"}  # compat 5
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in kept)
        # New rows take ids in WhaleFall's write order (instance id, then database name): its capacity
        # lists page by period_start, then id descending, so ids decide what the first page shows.
        upsert = (
            f"INSERT INTO {table} ({column_list}) SELECT {column_list} FROM {{source}} WHERE true "
            f"ORDER BY {', '.join(self.keys)} ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
        )
        temporary = f"capacity_batch_{self.level.value}"
        return tuple(sql.upsert_statements(self.ctes, self.final, upsert, self.records_read, temporary))


@cache
def level_statements(dialect: str, level: Level) -> tuple[TextClause, ...]:
    """A level's statements, built once per dialect."""
    sql = dialect_named(dialect)
    return _LEVEL_BUILDERS[level](sql).statements(sql)


_LEVEL_BUILDERS = {
    Level.DATABASE: _database_level,
    Level.INSTANCE: _instance_level,
}
