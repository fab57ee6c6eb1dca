"""Synthetic WhaleFall data: the awkward cases are present, rows are consistent and reproducible."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select, text

from capacity_pipeline.domain.samples.synthetic import LoadedCounts, SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema, tables_for

FIRST_DAY = date(2026, 6, 1)
LAST_DAY = date(2026, 6, 30)
# Inactive and deleted shares are raised from their defaults so that 40 instances have both.
SPEC = SyntheticSpec(
    instances=40,
    databases=5,
    days=30,
    end_date=LAST_DAY,
    seed=2026,
    inactive_share=0.15,
    deleted_share=0.15,
)
STATS_TABLES = ("database_size_stats", "instance_size_stats")


@pytest.fixture
def loaded(engine) -> LoadedCounts:
    return load_synthetic_data(engine, SPEC)


def _scalar(engine, sql: str) -> int:
    with engine.connect() as connection:
        return connection.execute(text(sql)).scalar_one()


def _count(engine, table: str) -> int:
    with engine.connect() as connection:
        table_object = tables_for(engine).tables[table]
        return connection.execute(select(func.count()).select_from(table_object)).scalar_one()


def test_spec_runs_for_days_ending_on_the_end_date():
    assert SPEC.start_date == FIRST_DAY


def test_returned_counts_match_the_tables(engine, loaded):
    assert loaded == LoadedCounts(
        instances=_count(engine, "instances"),
        database_size_stats=_count(engine, "database_size_stats"),
        instance_size_stats=_count(engine, "instance_size_stats"),
    )
    assert loaded.instances == 40
    assert 0 < loaded.database_size_stats <= 40 * 5 * 30


def test_all_stats_fall_inside_the_date_range(engine, loaded):
    for table in STATS_TABLES:
        with engine.connect() as connection:
            first, last = connection.execute(
                text(f"SELECT min(collected_date), max(collected_date) FROM {table}")
            ).one()
        assert (str(first), str(last)) == (FIRST_DAY.isoformat(), LAST_DAY.isoformat())


def test_some_instances_are_inactive_and_some_soft_deleted(engine, loaded):
    inactive = _scalar(engine, "SELECT count(*) FROM instances WHERE is_active IS FALSE")
    deleted = _scalar(engine, "SELECT count(*) FROM instances WHERE deleted_at IS NOT NULL")
    live = _scalar(engine, "SELECT count(*) FROM instances WHERE is_active IS TRUE AND deleted_at IS NULL")

    assert inactive > 0
    assert deleted > 0
    assert 0 < live < 40


def test_some_data_sizes_are_null(engine, loaded):
    null_data = _scalar(engine, "SELECT count(*) FROM database_size_stats WHERE data_size_mb IS NULL")
    with_data = _scalar(engine, "SELECT count(*) FROM database_size_stats WHERE data_size_mb IS NOT NULL")

    assert null_data > 0
    assert with_data > null_data
    # A data size, when present, never exceeds the database's size.
    assert _scalar(engine, "SELECT count(*) FROM database_size_stats WHERE data_size_mb > size_mb") == 0


def test_log_sizes_exist_exactly_for_sqlserver_instances(engine, loaded):
    by_kind = """
        SELECT count(*) FROM database_size_stats AS s JOIN instances AS i ON i.id = s.instance_id
        WHERE {condition}"""

    sqlserver_with_log = _scalar(
        engine, by_kind.format(condition="i.db_type = 'sqlserver' AND s.log_size_mb IS NOT NULL")
    )
    sqlserver_without_log = _scalar(
        engine, by_kind.format(condition="i.db_type = 'sqlserver' AND s.log_size_mb IS NULL")
    )
    others_with_log = _scalar(
        engine, by_kind.format(condition="i.db_type <> 'sqlserver' AND s.log_size_mb IS NOT NULL")
    )

    assert sqlserver_with_log > 0
    assert sqlserver_without_log == 0
    assert others_with_log == 0


def test_some_instances_miss_days(engine, loaded):
    with engine.connect() as connection:
        days_per_instance = (
            connection.execute(
                text("SELECT count(DISTINCT collected_date) FROM database_size_stats GROUP BY instance_id ORDER BY 1")
            )
            .scalars()
            .all()
        )

    assert len(days_per_instance) == 40
    assert days_per_instance[0] < 30  # some instance has a gap
    assert days_per_instance[-1] == 30  # and some has every day


def test_some_databases_shrink_and_some_grow(engine, loaded):
    compare = f"""
        SELECT count(*) FROM database_size_stats AS first
        JOIN database_size_stats AS last
          ON last.instance_id = first.instance_id AND last.database_name = first.database_name
        WHERE first.collected_date = '{FIRST_DAY.isoformat()}'
          AND last.collected_date = '{LAST_DAY.isoformat()}'
          AND last.size_mb {{operator}} first.size_mb"""

    assert _scalar(engine, compare.format(operator="<")) > 0
    assert _scalar(engine, compare.format(operator=">")) > 0


def test_live_instance_stats_are_the_sum_of_that_days_database_sizes(engine, loaded):
    day_sums = """
        SELECT instance_id, collected_date, sum(size_mb) AS total, count(*) AS databases
        FROM database_size_stats GROUP BY instance_id, collected_date"""
    mismatched = _scalar(
        engine,
        f"""
        SELECT count(*) FROM instance_size_stats AS s
        LEFT JOIN ({day_sums}) AS d
          ON d.instance_id = s.instance_id AND d.collected_date = s.collected_date
        WHERE s.is_deleted IS FALSE
          AND (d.total IS NULL OR s.total_size_mb <> d.total OR s.database_count <> d.databases)""",
    )
    days_without_live_row = _scalar(
        engine,
        f"""
        SELECT count(*) FROM ({day_sums}) AS d
        LEFT JOIN instance_size_stats AS s
          ON s.instance_id = d.instance_id AND s.collected_date = d.collected_date
         AND s.is_deleted IS FALSE
        WHERE s.instance_id IS NULL""",
    )

    assert mismatched == 0
    assert days_without_live_row == 0
    assert _scalar(engine, "SELECT count(*) FROM instance_size_stats WHERE is_deleted IS FALSE") > 0


def test_some_instance_stats_are_soft_deleted_duplicates_of_a_live_row(engine, loaded):
    deleted = _scalar(engine, "SELECT count(*) FROM instance_size_stats WHERE is_deleted IS TRUE")
    deleted_without_live_twin = _scalar(
        engine,
        """
        SELECT count(*) FROM instance_size_stats AS ghost
        LEFT JOIN instance_size_stats AS live
          ON live.instance_id = ghost.instance_id AND live.collected_date = ghost.collected_date
         AND live.is_deleted IS FALSE
        WHERE ghost.is_deleted IS TRUE AND (live.id IS NULL OR ghost.total_size_mb = live.total_size_mb)""",
    )

    assert deleted > 0
    assert deleted_without_live_twin == 0


_SNAPSHOT_COLUMNS = {
    "instances": ("id", "name", "db_type", "is_active", "deleted_at"),
    "database_size_stats": (
        "instance_id",
        "database_name",
        "collected_date",
        "size_mb",
        "data_size_mb",
        "log_size_mb",
    ),
    "instance_size_stats": ("instance_id", "collected_date", "is_deleted", "total_size_mb", "database_count"),
}


def _snapshot(engine) -> dict[str, list[tuple]]:
    """Every generated value, sorted and dialect-neutral (server-side timestamps and stats ids left out)."""
    tables = tables_for(engine).tables
    snapshot = {}
    with engine.connect() as connection:
        for table, names in _SNAPSHOT_COLUMNS.items():
            columns = [tables[table].c[name] for name in names]
            rows = connection.execute(select(*columns).order_by(*columns))
            snapshot[table] = [tuple(_utc_naive(value) for value in row) for row in rows]
    return snapshot


def _utc_naive(value):
    """SQLite hands timestamps back naive (in UTC), PostgreSQL aware: compare them as naive UTC."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def test_the_same_spec_gives_identical_rows_in_a_second_sqlite_file(engine, loaded, tmp_path):
    second = make_engine(f"sqlite:///{tmp_path / 'second.db'}")
    create_schema(second)

    second_counts = load_synthetic_data(second, SPEC)

    assert second_counts == loaded
    assert _snapshot(second) == _snapshot(engine)
    second.dispose()


def test_a_different_seed_gives_different_rows(engine, loaded, tmp_path):
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    create_schema(other)

    load_synthetic_data(other, SyntheticSpec(40, 5, 30, LAST_DAY, seed=SPEC.seed + 1))

    assert _snapshot(other)["database_size_stats"] != _snapshot(engine)["database_size_stats"]
    other.dispose()


def test_loading_into_a_database_with_instances_is_refused(engine, loaded):
    before = _snapshot(engine)

    with pytest.raises(ValueError, match=r"^instances: the target database already has 40 instances"):
        load_synthetic_data(engine, SPEC)

    assert _snapshot(engine) == before
