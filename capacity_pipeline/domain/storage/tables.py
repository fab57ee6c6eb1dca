"""WhaleFall's tables as SQLAlchemy definitions (compat 1), and the schema set-up.

On PostgreSQL the four capacity tables are range-partitioned by month with the partition key in
the primary key, exactly as WhaleFall's migrations leave them. On SQLite they are plain tables with
a rowid primary key. `create_schema` only creates what is missing: it never drops or alters.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TextClause,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from capacity_pipeline.domain.model import TaskStatus
from capacity_pipeline.domain.storage.dialects import dialect_named

# Table -> (partition key, the display name WhaleFall writes into each partition's comment).
PARTITIONED_TABLES: dict[str, tuple[str, str]] = {
    "database_size_stats": ("collected_date", "数据库统计表"),
    "instance_size_stats": ("collected_date", "实例统计表"),
    "database_size_aggregations": ("period_start", "数据库聚合表"),
    "instance_size_aggregations": ("period_start", "实例聚合表"),
}

# The parents' own comments, as in WhaleFall's baseline dump.
_PARENT_COMMENTS = {
    "database_size_stats": "数据库大小统计表（按月分区）",
    "instance_size_stats": "实例大小统计表（按月分区）",
    "database_size_aggregations": "数据库大小聚合统计表（按月分区）",
    "instance_size_aggregations": "实例大小聚合统计表（按月分区）",
}

_TIMESTAMPTZ = DateTime(timezone=True)
_JSON = JSON().with_variant(JSONB(), "postgresql")


def _status_check(table: str) -> CheckConstraint:
    values = ", ".join(f"'{status.value}'" for status in TaskStatus)
    return CheckConstraint(f"status IN ({values})", name=f"{table}_status_check")


def _partitioned(
    metadata: MetaData,
    name: str,
    id_type: type[Integer] | type[BigInteger],
    columns: list[Column],
    constraints: list[object],
    *,
    partitioned: bool,
) -> Table:
    """A capacity table: range-partitioned by month with PK (id, partition key) where the dialect
    partitions (PostgreSQL, as WhaleFall's migrations leave them), else plain with a rowid key."""
    partition_key = PARTITIONED_TABLES[name][0]
    if partitioned:
        id_column = Column("id", id_type, nullable=False, autoincrement=True)
        primary_key = PrimaryKeyConstraint("id", partition_key, name=f"{name}_pkey")
        return Table(
            name,
            metadata,
            id_column,
            *columns,
            primary_key,
            *constraints,
            comment=_PARENT_COMMENTS[name],
            postgresql_partition_by=f"RANGE ({partition_key})",
        )
    id_column = Column("id", Integer, primary_key=True, autoincrement=True)
    return Table(name, metadata, id_column, *columns, *constraints)


@cache
def whalefall_metadata(dialect: str) -> MetaData:
    """The pipeline's view of WhaleFall's schema, built for one dialect."""
    sql = dialect_named(dialect)
    partitioned = sql.partitions_by_month
    metadata = MetaData()
    now = text(sql.now_sql)

    Table(
        "instances",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(255), nullable=False),
        Column("db_type", String(50), nullable=False),
        Column("is_active", Boolean, nullable=False, server_default=text("true")),
        Column("deleted_at", _TIMESTAMPTZ, nullable=True),
        Column("created_at", _TIMESTAMPTZ, nullable=True, server_default=now),
        Column("updated_at", _TIMESTAMPTZ, nullable=True, server_default=now),
        UniqueConstraint("name", name="instances_name_key"),
        Index("ix_instances_name", "name", unique=True),
        Index("ix_instances_db_type", "db_type"),
    )

    _partitioned(
        metadata,
        "database_size_stats",
        BigInteger,
        [
            Column("instance_id", Integer, nullable=False),
            Column("database_name", String(255), nullable=False),
            Column("size_mb", BigInteger, nullable=False),
            Column("data_size_mb", BigInteger, nullable=True),
            Column("log_size_mb", BigInteger, nullable=True),
            Column("collected_date", Date, nullable=False),
            Column("collected_at", _TIMESTAMPTZ, nullable=False, server_default=now),
            Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=now),
            Column("updated_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        ],
        [
            ForeignKeyConstraint(["instance_id"], ["instances.id"], name="database_size_stats_instance_id_fkey"),
            UniqueConstraint("instance_id", "database_name", "collected_date", name="uq_daily_database_size"),
            Index("ix_database_size_stats_collected_date", "collected_date"),
            Index("ix_database_size_stats_instance_date", "instance_id", "collected_date"),
            Index("ix_database_size_stats_instance_db", "instance_id", "database_name"),
        ],
        partitioned=partitioned,
    )

    _partitioned(
        metadata,
        "instance_size_stats",
        Integer,
        [
            Column("instance_id", Integer, nullable=False),
            Column("total_size_mb", Integer, nullable=False, server_default=text("0")),
            Column("database_count", Integer, nullable=False, server_default=text("0")),
            Column("collected_date", Date, nullable=False),
            Column("collected_at", _TIMESTAMPTZ, nullable=False, server_default=now),
            Column("is_deleted", Boolean, nullable=False, server_default=text("false")),
            Column("deleted_at", _TIMESTAMPTZ, nullable=True),
            Column("created_at", _TIMESTAMPTZ, nullable=True, server_default=now),
            Column("updated_at", _TIMESTAMPTZ, nullable=True, server_default=now),
        ],
        [
            ForeignKeyConstraint(
                ["instance_id"],
                ["instances.id"],
                name="instance_size_stats_instance_id_fkey",
                ondelete="CASCADE",
            ),
            Index(
                "uq_instance_size_stats_instance_date",
                "instance_id",
                "collected_date",
                unique=True,
                postgresql_where=text("is_deleted = false"),
                sqlite_where=text("is_deleted = 0"),
            ),
            Index("ix_instance_size_stats_collected_date", "collected_date"),
            Index("ix_instance_size_stats_deleted", "is_deleted"),
            Index("ix_instance_size_stats_instance_date", "instance_id", "collected_date"),
            Index("ix_instance_size_stats_instance_id", "instance_id"),
            Index("ix_instance_size_stats_total_size", "total_size_mb"),
        ],
        partitioned=partitioned,
    )

    _partitioned(
        metadata,
        "database_size_aggregations",
        BigInteger,
        [
            Column("instance_id", Integer, nullable=False),
            Column("database_name", String(255), nullable=False),
            Column("period_type", String(20), nullable=False),
            Column("period_start", Date, nullable=False),
            Column("period_end", Date, nullable=False),
            Column("avg_size_mb", BigInteger, nullable=False),
            Column("max_size_mb", BigInteger, nullable=False),
            Column("min_size_mb", BigInteger, nullable=False),
            Column("data_count", Integer, nullable=False),
            Column("avg_data_size_mb", BigInteger, nullable=True),
            Column("max_data_size_mb", BigInteger, nullable=True),
            Column("min_data_size_mb", BigInteger, nullable=True),
            Column("avg_log_size_mb", BigInteger, nullable=True),
            Column("max_log_size_mb", BigInteger, nullable=True),
            Column("min_log_size_mb", BigInteger, nullable=True),
            Column("size_change_mb", BigInteger, nullable=False, server_default=text("0")),
            Column("size_change_percent", Numeric(10, 2), nullable=False, server_default=text("0")),
            Column("data_size_change_mb", BigInteger, nullable=True),
            Column("data_size_change_percent", Numeric(10, 2), nullable=True),
            Column("log_size_change_mb", BigInteger, nullable=True),
            Column("log_size_change_percent", Numeric(10, 2), nullable=True),
            Column("growth_rate", Numeric(10, 2), nullable=False, server_default=text("0")),
            Column("calculated_at", _TIMESTAMPTZ, nullable=False),
            Column("created_at", _TIMESTAMPTZ, nullable=False),
        ],
        [
            UniqueConstraint(
                "instance_id",
                "database_name",
                "period_type",
                "period_start",
                name="uq_database_size_aggregation",
            ),
            Index("ix_database_size_aggregations_id", "id"),
            Index(
                "ix_database_size_aggregations_instance_period",
                "instance_id",
                "period_type",
                "period_start",
            ),
            Index("ix_database_size_aggregations_period_type", "period_type", "period_start"),
        ],
        partitioned=partitioned,
    )

    _partitioned(
        metadata,
        "instance_size_aggregations",
        BigInteger,
        [
            Column("instance_id", Integer, nullable=False),
            Column("period_type", String(20), nullable=False),
            Column("period_start", Date, nullable=False),
            Column("period_end", Date, nullable=False),
            Column("total_size_mb", BigInteger, nullable=False),
            Column("avg_size_mb", BigInteger, nullable=False),
            Column("max_size_mb", BigInteger, nullable=False),
            Column("min_size_mb", BigInteger, nullable=False),
            Column("data_count", Integer, nullable=False),
            Column("database_count", Integer, nullable=False),
            Column("avg_database_count", Numeric(10, 2), nullable=True),
            Column("max_database_count", Integer, nullable=True),
            Column("min_database_count", Integer, nullable=True),
            Column("total_size_change_mb", BigInteger, nullable=True),
            Column("total_size_change_percent", Numeric(10, 2), nullable=True),
            Column("database_count_change", Integer, nullable=True),
            Column("database_count_change_percent", Numeric(10, 2), nullable=True),
            Column("growth_rate", Numeric(10, 2), nullable=True),
            Column("trend_direction", String(20), nullable=True),
            Column("calculated_at", _TIMESTAMPTZ, nullable=False),
            Column("created_at", _TIMESTAMPTZ, nullable=False),
        ],
        [
            ForeignKeyConstraint(
                ["instance_id"],
                ["instances.id"],
                name="instance_size_aggregations_instance_id_fkey",
            ),
            UniqueConstraint("instance_id", "period_type", "period_start", name="uq_instance_size_aggregation"),
            Index("ix_instance_size_aggregations_id", "id"),
            Index(
                "ix_instance_size_aggregations_instance_period",
                "instance_id",
                "period_type",
                "period_start",
            ),
            Index("ix_instance_size_aggregations_period_type", "period_type", "period_start"),
        ],
        partitioned=partitioned,
    )

    Table(
        "task_runs",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", String(36), nullable=False),
        Column("task_key", String(128), nullable=False),
        Column("task_name", String(255), nullable=False),
        Column("task_category", String(50), nullable=False),
        Column("trigger_source", String(20), nullable=False),
        Column("status", String(32), nullable=False, server_default=text("'running'")),
        Column("started_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        Column("completed_at", _TIMESTAMPTZ, nullable=True),
        Column("created_by", Integer, nullable=True),
        Column("progress_total", Integer, nullable=False, server_default=text("0")),
        Column("progress_completed", Integer, nullable=False, server_default=text("0")),
        Column("progress_failed", Integer, nullable=False, server_default=text("0")),
        Column("summary_json", _JSON, nullable=True),
        Column("result_url", String(255), nullable=True),
        Column("error_message", Text, nullable=True),
        Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        Column("updated_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        UniqueConstraint("run_id", name="uq_task_runs_run_id"),
        _status_check("task_runs"),
        Index("ix_task_runs_run_id", "run_id", unique=True),
        Index("ix_task_runs_task_key", "task_key"),
        Index("ix_task_runs_task_category", "task_category"),
        Index("ix_task_runs_trigger_source", "trigger_source"),
        Index("ix_task_runs_status", "status"),
        Index("ix_task_runs_started_at", "started_at"),
        Index("ix_task_runs_task_key_started_at", "task_key", "started_at"),
    )

    Table(
        "task_run_items",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "run_id",
            String(36),
            ForeignKey("task_runs.run_id", name="fk_task_run_items_run_id"),
            nullable=False,
        ),
        Column("item_type", String(20), nullable=False),
        Column("item_key", String(128), nullable=False),
        Column("item_name", String(255), nullable=True),
        Column("instance_id", Integer, nullable=True),
        Column("status", String(32), nullable=False, server_default=text("'pending'")),
        Column("started_at", _TIMESTAMPTZ, nullable=True),
        Column("completed_at", _TIMESTAMPTZ, nullable=True),
        Column("metrics_json", _JSON, nullable=True),
        Column("details_json", _JSON, nullable=True),
        Column("error_message", Text, nullable=True),
        Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        Column("updated_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        UniqueConstraint("run_id", "item_type", "item_key", name="uq_task_run_items_run_type_key"),
        _status_check("task_run_items"),
        Index("ix_task_run_items_run_id", "run_id"),
        Index("ix_task_run_items_item_type", "item_type"),
        Index("ix_task_run_items_item_key", "item_key"),
        Index("ix_task_run_items_instance_id", "instance_id"),
        Index("ix_task_run_items_status", "status"),
        Index("ix_task_run_items_run_id_status", "run_id", "status"),
    )
    # Not WhaleFall's: which Dagster run works for which TaskRun, and whether that run is alive.
    Table(
        "capacity_task_run_links",
        metadata,
        Column("task_run_id", String(36), primary_key=True),  # task_runs.run_id
        # The run that will claim the TaskRun: the trigger sensor's run key, or a Dagster run id.
        Column("claim_key", String(255), nullable=False),
        # Equal requests (scope, period, partition) share one run while it has not started.
        Column("request_key", String(255), nullable=True),
        Column("dagster_run_id", String(64), nullable=True),
        Column("claimed_at", _TIMESTAMPTZ, nullable=True),
        Column("heartbeat_at", _TIMESTAMPTZ, nullable=True),
        # What the worker reported at its last heartbeat, to tell why it died.
        Column("worker_pid", Integer, nullable=True),
        Column("worker_memory_mib", Integer, nullable=True),
        Column("machine_memory_mib", Integer, nullable=True),
        Column("created_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        Index("ix_capacity_task_run_links_claim_key", "claim_key"),
        Index("ix_capacity_task_run_links_dagster_run_id", "dagster_run_id"),
        Index("ix_capacity_task_run_links_request_key", "request_key"),
        comment="capacity_pipeline: the Dagster run doing each TaskRun's work, and its heartbeat",
    )
    _forecast_tables(metadata, now)
    _change_tables(metadata, now)
    # Not WhaleFall's: each sensor's last tick (by the database's clock), so the API's health can
    # tell whether a Dagster daemon is picking requests up.
    Table(
        "capacity_sensor_heartbeats",
        metadata,
        Column("sensor_name", String(255), primary_key=True),
        Column("ticked_at", _TIMESTAMPTZ, nullable=False),
        Column("interval_seconds", Float, nullable=False),  # how often the sensor ticks when all is well
        comment="capacity_pipeline: each Dagster sensor's last tick, for the API's health",
    )
    return metadata


def _one_per_series(table: str, key: tuple[str, ...], after: tuple[str, ...] = ()) -> list[Index]:
    """Unique per series, database_name NULL at instance level: two partial unique indexes, one on
    `key + after` for the instance's own rows, one on `key + database_name + after` for databases.

    A plain UNIQUE would let instance rows repeat (NULLs are distinct in SQL); NULLS NOT DISTINCT is
    PostgreSQL 15+ only and unknown to SQLite; a '' stand-in would be a sentinel every reader must
    know. Both dialects have partial indexes, and the column keeps meaning what it says.
    """
    return [
        Index(
            f"uq_{table}_instance",
            *key,
            *after,
            unique=True,
            postgresql_where=text("database_name IS NULL"),
            sqlite_where=text("database_name IS NULL"),
        ),
        Index(
            f"uq_{table}_database",
            *key,
            "database_name",
            *after,
            unique=True,
            postgresql_where=text("database_name IS NOT NULL"),
            sqlite_where=text("database_name IS NOT NULL"),
        ),
    ]


def _forecast_tables(metadata: MetaData, now: TextClause) -> None:
    """Not WhaleFall's: the capacity limits DBAs set, and the forecasts (docs/forecasts.md)."""
    cascade = {"ondelete": "CASCADE"}  # WhaleFall may delete an instance: its limits and forecasts go too
    Table(
        "capacity_limits",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "instance_id",
            Integer,
            ForeignKey("instances.id", name="fk_capacity_limits_instance", **cascade),
            nullable=False,
        ),
        Column("database_name", String(255), nullable=True),  # NULL: the instance itself
        Column("limit_mb", BigInteger, nullable=False),
        Column("note", Text, nullable=True),
        Column("updated_by", Integer, nullable=True),  # a WhaleFall user id, as task_runs.created_by
        Column("updated_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        CheckConstraint("limit_mb > 0", name="capacity_limits_limit_mb_check"),
        *_one_per_series("capacity_limits", ("instance_id",)),
        comment="capacity_pipeline: the size (MB) at which an instance or a database is full",
    )
    qualities = ", ".join(f"'{quality}'" for quality in ("ok", "insufficient_data"))
    Table(
        "capacity_forecasts",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("as_of_date", Date, nullable=False),
        Column("level", String(16), nullable=False),
        Column(
            "instance_id",
            Integer,
            ForeignKey("instances.id", name="fk_capacity_forecasts_instance", **cascade),
            nullable=False,
        ),
        Column("database_name", String(255), nullable=True),  # NULL at instance level
        Column("horizon_days", Integer, nullable=False),
        Column("p10_mb", Float(53), nullable=True),
        Column("p50_mb", Float(53), nullable=True),
        Column("p90_mb", Float(53), nullable=True),
        Column("growth_mb_per_day", Float(53), nullable=True),
        Column("limit_mb", BigInteger, nullable=True),
        Column("days_to_limit_p10", Integer, nullable=True),
        Column("days_to_limit_p50", Integer, nullable=True),
        Column("days_to_limit_p90", Integer, nullable=True),
        Column("quality", String(32), nullable=False),
        Column("change_point_date", Date, nullable=True),
        Column("samples_used", Integer, nullable=False),
        Column("method", String(64), nullable=False),
        Column("computed_at", _TIMESTAMPTZ, nullable=False),
        CheckConstraint("level IN ('instance', 'database')", name="capacity_forecasts_level_check"),
        CheckConstraint(
            "(level = 'instance') = (database_name IS NULL)", name="capacity_forecasts_database_name_check"
        ),
        CheckConstraint(f"quality IN ({qualities})", name="capacity_forecasts_quality_check"),
        CheckConstraint("horizon_days > 0", name="capacity_forecasts_horizon_days_check"),
        *_one_per_series("capacity_forecasts", ("as_of_date", "level", "instance_id"), ("horizon_days",)),
        Index("ix_capacity_forecasts_instance", "instance_id", "as_of_date"),
        comment="capacity_pipeline: P10/P50/P90 sizes per as-of day, level, series and horizon",
    )


def _change_tables(metadata: MetaData, now: TextClause) -> None:
    """Not WhaleFall's: which instance's samples changed on which day, and how far each roll-up
    window has followed those changes (domain/samples/changes.py, domain/aggregation/refresh.py)."""
    Table(
        "capacity_sample_versions",
        metadata,
        Column("level", String(16), primary_key=True),
        Column("instance_id", Integer, primary_key=True),
        Column("collected_date", Date, primary_key=True),
        Column("version", Text, nullable=False),
        comment="capacity_pipeline: one version per level, instance and day of samples, as last observed",
    )
    Table(
        "capacity_sample_observations",
        metadata,
        Column("level", String(16), primary_key=True),
        Column("first_observed_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        Column("last_observed_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        Column("observed_from", Date, nullable=True),  # the first day the last observation covered
        comment="capacity_pipeline: when each level's samples were first and last observed, and from which day",
    )
    Table(
        "capacity_sample_changes",
        metadata,
        # Ids grow in commit order (observations are serialised): "after id N" is a change log cursor.
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("level", String(16), nullable=False),
        Column("instance_id", Integer, nullable=False),
        Column("collected_date", Date, nullable=False),
        Column("observed_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        Index("ix_capacity_sample_changes_level_day", "level", "collected_date", "id"),
        comment="capacity_pipeline: every observed change of an instance's samples on a day",
    )
    Table(
        "capacity_window_marks",
        metadata,
        Column("level", String(16), primary_key=True),
        Column("period_type", String(16), primary_key=True),
        Column("period_start", Date, primary_key=True),
        Column("changes_through", BigInteger, nullable=False),  # capacity_sample_changes.id
        Column("refreshed_at", _TIMESTAMPTZ, nullable=False, server_default=now),
        comment="capacity_pipeline: the last sample change each roll-up window was aggregated after",
    )


def tables_for(bind: Engine | Connection) -> MetaData:
    return whalefall_metadata(bind.dialect.name)


def create_schema(engine: Engine) -> list[str]:
    """Create the tables that do not exist yet; returns their names. Never alters existing ones."""
    metadata = tables_for(engine)
    with engine.begin() as connection:
        existing = set(connection.dialect.get_table_names(connection))
        missing = [table for table in metadata.sorted_tables if table.name not in existing]
        metadata.create_all(connection, tables=missing, checkfirst=True)
    return [table.name for table in missing]
