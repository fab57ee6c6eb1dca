"""WhaleFall's schema as the pipeline creates it, and month partitions created on demand (compat 1, Q16)."""

from __future__ import annotations

import threading
from datetime import date

import pytest
from sqlalchemy import Engine, inspect, text

from capacity_pipeline.domain.aggregation.engine import aggregate_period
from capacity_pipeline.domain.model import Outcome
from capacity_pipeline.domain.periods import PeriodType, Window, months_between
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.month_partitions import ensure_month_partitions, partition_name
from capacity_pipeline.domain.storage.tables import create_schema

CAPACITY_TABLES = [
    "database_size_stats",
    "instance_size_stats",
    "database_size_aggregations",
    "instance_size_aggregations",
]


def _scalar(engine: Engine, sql: str, **params) -> object:
    with engine.connect() as connection:
        return connection.execute(text(sql), params).scalar()


def test_capacity_tables_are_range_partitioned_by_month_keys(pg_engine):
    keys = {
        "database_size_stats": "collected_date",
        "instance_size_stats": "collected_date",
        "database_size_aggregations": "period_start",
        "instance_size_aggregations": "period_start",
    }
    for table, key in keys.items():
        definition = _scalar(pg_engine, "SELECT pg_get_partkeydef(to_regclass(:t))", t=table)
        assert definition == f"RANGE ({key})"
        primary_key = inspect(pg_engine).get_pk_constraint(table)
        assert (primary_key["name"], primary_key["constrained_columns"]) == (f"{table}_pkey", ["id", key])


def test_constraints_and_indexes_carry_whalefall_names(pg_engine):
    inspector = inspect(pg_engine)
    unique = {c["name"]: c["column_names"] for c in inspector.get_unique_constraints("database_size_aggregations")}
    assert unique == {"uq_database_size_aggregation": ["instance_id", "database_name", "period_type", "period_start"]}
    indexes = {i["name"]: i for i in inspector.get_indexes("instance_size_stats")}
    partial = indexes["uq_instance_size_stats_instance_date"]
    assert partial["unique"] and partial["column_names"] == ["instance_id", "collected_date"]
    assert partial["dialect_options"]["postgresql_where"] == "(is_deleted = false)"
    assert set(indexes) >= {
        "ix_instance_size_stats_collected_date",
        "ix_instance_size_stats_deleted",
        "ix_instance_size_stats_instance_date",
        "ix_instance_size_stats_instance_id",
        "ix_instance_size_stats_total_size",
    }
    checks = {c["name"]: c["sqltext"] for c in inspector.get_check_constraints("task_runs")}
    assert set(checks) == {"task_runs_status_check"}
    for status in ("pending", "running", "completed", "completed_with_errors", "failed", "cancelled"):
        assert f"'{status}'" in checks["task_runs_status_check"]
    foreign = inspector.get_foreign_keys("task_run_items")
    assert [(f["name"], f["referred_table"], f["referred_columns"]) for f in foreign] == [
        ("fk_task_run_items_run_id", "task_runs", ["run_id"])
    ]
    columns = {c["name"]: c for c in inspector.get_columns("task_runs")}
    assert str(columns["summary_json"]["type"]) == "JSONB"
    assert columns["status"]["default"] == "'running'::character varying"
    aggregation_columns = {c["name"]: c for c in inspector.get_columns("database_size_aggregations")}
    assert str(aggregation_columns["size_change_percent"]["type"]) == "NUMERIC(10, 2)"
    assert aggregation_columns["calculated_at"]["default"] is None
    assert "trend_direction" not in aggregation_columns  # compat Q6


def test_init_db_is_idempotent_and_never_alters_existing_tables(postgres_url, tmp_path):
    for engine in (make_engine(f"sqlite:///{tmp_path / 'w.db'}"), make_engine(postgres_url)):
        if engine.dialect.name == "sqlite":
            with engine.begin() as connection:
                # An existing WhaleFall `instances` table with columns the pipeline does not know.
                connection.exec_driver_sql(
                    "CREATE TABLE instances (id INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL, "
                    "db_type VARCHAR(50) NOT NULL, host VARCHAR(255), is_active BOOLEAN NOT NULL DEFAULT 1, "
                    "deleted_at TIMESTAMP)"
                )
            created = create_schema(engine)
            assert "instances" not in created and "task_runs" in created
            host_column = [c["name"] for c in inspect(engine).get_columns("instances")]
            assert "host" in host_column
        else:
            create_schema(engine)
        assert create_schema(engine) == []  # a second run creates nothing
        engine.dispose()


def test_partitions_get_whalefall_names_bounds_and_comments(pg_engine):
    created = ensure_month_partitions(pg_engine, ["database_size_aggregations"], [date(2031, 12, 15)])
    assert created == ["database_size_aggregations_2031_12"]
    bounds = _scalar(
        pg_engine,
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = :n",
        n="database_size_aggregations_2031_12",
    )
    assert bounds == "FOR VALUES FROM ('2031-12-01') TO ('2032-01-01')"
    comment = _scalar(pg_engine, "SELECT obj_description(to_regclass(:n), 'pg_class')", n=created[0])
    assert comment == "数据库聚合表分区表 - 2031-12"
    assert ensure_month_partitions(pg_engine, ["database_size_aggregations"], [date(2031, 12, 1)]) == []


def test_months_between_covers_every_touched_month():
    assert months_between(date(2025, 11, 30), date(2026, 2, 1)) == [
        date(2025, 11, 1),
        date(2025, 12, 1),
        date(2026, 1, 1),
        date(2026, 2, 1),
    ]
    assert partition_name("instance_size_stats", date(2026, 7, 9)) == "instance_size_stats_2026_07"


def test_racing_processes_create_a_partition_once_without_failing(pg_engine, postgres_url):
    engines = [make_engine(postgres_url) for _ in range(4)]
    results, errors = [], []
    barrier = threading.Barrier(len(engines))

    def create(engine: Engine) -> None:
        barrier.wait()
        try:
            results.append(ensure_month_partitions(engine, CAPACITY_TABLES, [date(2032, 3, 1)]))
        except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=create, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()

    assert errors == []
    created = sorted(name for names in results for name in names)
    assert created == sorted(f"{table}_2032_03" for table in CAPACITY_TABLES)


def test_aggregating_a_month_without_partition_creates_it(pg_engine, pg_whalefall):
    """Spec Q16: WhaleFall's run fails here; the pipeline creates the partition first."""
    day = date(2033, 5, 20)
    pg_whalefall.instance(1)
    pg_whalefall.database_stats(1, "app", [(day, 10, 10)])
    pg_whalefall.instance_stats(1, [(day, 10, 1)])
    assert _scalar(pg_engine, "SELECT to_regclass('instance_size_aggregations_2033_05')") is None

    report = aggregate_period(pg_engine, PeriodType.DAILY, Window(day, day))

    assert report.count(Outcome.FAILED) == 0 and report.count(Outcome.COMPLETED) == 1
    assert len(pg_whalefall.rows("instance_size_aggregations")) == 1
    assert _scalar(pg_engine, "SELECT to_regclass('database_size_aggregations_2033_05')::text") == (
        "database_size_aggregations_2033_05"
    )


def test_a_month_another_partition_already_covers_is_left_as_it_is(pg_engine):
    """WhaleFall's admin API may have made the month under another name: rows route there."""
    with pg_engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE database_size_aggregations_jan_2034 PARTITION OF database_size_aggregations "
            "FOR VALUES FROM ('2034-01-01') TO ('2034-02-01')"
        )
    try:
        assert ensure_month_partitions(pg_engine, ["database_size_aggregations"], [date(2034, 1, 9)]) == []
        assert _scalar(pg_engine, "SELECT to_regclass('database_size_aggregations_2034_01')") is None
    finally:
        with pg_engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE database_size_aggregations_jan_2034")


def test_sqlite_has_no_partitions_to_make(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'whalefall.db'}")
    create_schema(engine)
    assert ensure_month_partitions(engine, CAPACITY_TABLES, [date(2030, 1, 1)]) == []
    engine.dispose()


def test_unknown_table_is_rejected(engine):
    with pytest.raises(ValueError, match="table: 'instances' is not partitioned"):
        ensure_month_partitions(engine, ["instances"], [date(2030, 1, 1)])
