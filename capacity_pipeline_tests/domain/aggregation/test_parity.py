"""Set-based results equal WhaleFall's row-by-row results, column for column.

The oracle is a literal transcription of WhaleFall's runners (whalefall_reference), run on
PostgreSQL like WhaleFall; SQLite must then agree with PostgreSQL on the same generated data.
"""

from __future__ import annotations

from datetime import date

import pytest

from capacity_pipeline.domain.aggregation.engine import aggregate_period
from capacity_pipeline.domain.periods import PeriodType, current_window, last_window, previous_window
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests import whalefall_reference as reference
from capacity_pipeline_tests.support import WhaleFallData

TODAY = date(2026, 7, 2)  # the worked "today" of docs/whalefall-compatibility.md
SPEC = SyntheticSpec(instances=30, databases=6, days=220, end_date=TODAY, seed=20260702)
IGNORED = {"id", "calculated_at", "created_at"}
WINDOWS = [
    (period, which, window(period, TODAY))
    for period in PeriodType
    for which, window in (("current", current_window), ("last", last_window))
]


def _without_ignored(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in IGNORED}


@pytest.fixture(scope="module")
def both_dialects(postgres_engine, tmp_path_factory):
    """The same synthetic data, aggregated for every window, on PostgreSQL and SQLite."""
    from capacity_pipeline_tests.conftest import empty_tables

    empty_tables(postgres_engine)
    sqlite = make_engine(f"sqlite:///{tmp_path_factory.mktemp('parity') / 'whalefall.db'}")
    create_schema(sqlite)
    for engine in (postgres_engine, sqlite):
        load_synthetic_data(engine, SPEC)
        for period, _, window in WINDOWS:
            aggregate_period(engine, period, window, batch_size=7)
    yield WhaleFallData(postgres_engine), WhaleFallData(sqlite)
    sqlite.dispose()
    empty_tables(postgres_engine)


@pytest.mark.parametrize(("period", "which", "window"), WINDOWS, ids=[f"{p}-{w}" for p, w, _ in WINDOWS])
def test_postgresql_matches_whalefall_row_by_row(both_dialects, period, which, window):
    postgresql, _ = both_dialects
    previous = previous_window(period, window)
    with postgresql.engine.connect() as connection:
        expected_databases = reference.database_rows(connection, period.value, window, previous)
        expected_instances = reference.instance_rows(connection, period.value, window, previous)
    assert expected_databases and expected_instances  # the window has data to compare

    databases = {
        (row["instance_id"], row["database_name"]): _without_ignored(row)
        for row in postgresql.rows("database_size_aggregations")
        if row["period_type"] == period.value and row["period_start"] == window.start
    }
    for row in databases.values():
        del row["instance_id"], row["database_name"]
    assert databases == expected_databases

    instances = {
        row["instance_id"]: _without_ignored(row)
        for row in postgresql.rows("instance_size_aggregations")
        if row["period_type"] == period.value and row["period_start"] == window.start
    }
    for row in instances.values():
        del row["instance_id"]
    assert instances == expected_instances


@pytest.mark.parametrize("table", ["database_size_aggregations", "instance_size_aggregations"])
def test_sqlite_matches_postgresql(both_dialects, table):
    postgresql, sqlite = both_dialects
    order = "instance_id, period_type, period_start" + (", database_name" if table.startswith("database") else "")
    expected = [_without_ignored(row) for row in postgresql.rows(table, order)]
    assert len(expected) >= 200
    assert [_without_ignored(row) for row in sqlite.rows(table, order)] == expected
