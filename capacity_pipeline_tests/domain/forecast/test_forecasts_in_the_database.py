"""Forecasts read, computed, stored and read back through the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from capacity_pipeline.domain.forecast.calibration import calibration
from capacity_pipeline.domain.forecast.compute import compute_forecasts
from capacity_pipeline.domain.forecast.fleet import fleet_summary
from capacity_pipeline.domain.forecast.limits import set_limit
from capacity_pipeline.domain.forecast.model import JSON_KEYS, ForecastOptions, InvalidForecastInput
from capacity_pipeline.domain.forecast.series import read_series
from capacity_pipeline.domain.forecast.store import latest_as_of, read_forecasts
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.storage.dialects import dialect_of

AS_OF = date(2026, 6, 30)
START = AS_OF - timedelta(days=59)  # 60 days of samples up to the as-of day
NOW = datetime(2026, 7, 1, 4, 0, tzinfo=UTC)


def _days(count: int, first: date = START) -> list[date]:
    return [first + timedelta(days=i) for i in range(count)]


def _growing(whalefall, instance_id: int = 7, *, database: str = "orders") -> None:
    """Instance 7: database orders at 1000 MB + 10 MB a day; the instance's total the same."""
    whalefall.instance(instance_id)
    sizes = [1000 + 10 * i for i in range(60)]
    whalefall.database_stats(
        instance_id, database, [(day, size, None) for day, size in zip(_days(60), sizes, strict=True)]
    )
    whalefall.instance_stats(instance_id, [(day, size, 1) for day, size in zip(_days(60), sizes, strict=True)])


def _json(engine, **filters) -> list[dict]:
    return [row.as_json() for row in read_forecasts(engine, **filters)]


def test_forecasts_are_stored_and_read_back_as_the_json_rows(engine, whalefall):
    _growing(whalefall)
    set_limit(engine, 7, "orders", 2000)

    report = compute_forecasts(engine, Level.DATABASE, AS_OF, now=NOW)

    assert (report.series, report.forecast, report.insufficient, report.rows_written) == (1, 1, 0, 3)
    rows = _json(engine, level=Level.DATABASE, as_of=AS_OF)
    assert [list(row) for row in rows] == [list(JSON_KEYS)] * 3
    # 1590 MB on the as-of day (1000 + 10 * 59), 10 MB a day; a noiseless line has no band to speak of.
    assert rows[0] == {
        "as_of_date": "2026-06-30",
        "level": "database",
        "instance_id": 7,
        "database_name": "orders",
        "horizon_days": 30,
        "p10_mb": 1890.0,
        "p50_mb": 1890.0,
        "p90_mb": 1890.0,
        "growth_mb_per_day": 10.0,
        "limit_mb": 2000,
        "days_to_limit_p10": 41,  # 1590 + 10 * 41 = 2000
        "days_to_limit_p50": 41,
        "days_to_limit_p90": 41,
        "quality": "ok",
        "change_point_date": None,
        "samples_used": 60,
        "method": "robust-drift-v1",
    }
    assert [(row["horizon_days"], row["p50_mb"]) for row in rows] == [(30, 1890.0), (90, 2490.0), (180, 3390.0)]
    assert next(read_forecasts(engine, level=Level.DATABASE)).computed_at == NOW


def test_the_instance_level_reads_live_rows_of_active_instances_only(engine, whalefall):
    _growing(whalefall)
    whalefall.instance_stats(7, [(day, 999_999, 1) for day in _days(60)], is_deleted=True)  # superseded rows
    whalefall.instance(8, active=False)
    whalefall.instance_stats(8, [(day, 500, 1) for day in _days(60)])
    whalefall.instance(9, deleted=True)
    whalefall.instance_stats(9, [(day, 500, 1) for day in _days(60)])

    compute_forecasts(engine, Level.INSTANCE, AS_OF, now=NOW)

    rows = _json(engine, level=Level.INSTANCE)
    assert {row["instance_id"] for row in rows} == {7}
    assert rows[0]["database_name"] is None and rows[0]["p50_mb"] == 1890.0 and rows[0]["growth_mb_per_day"] == 10.0


def test_a_purge_is_found_on_its_date_and_thin_series_are_refused(engine, whalefall):
    whalefall.instance(7)
    purged = [5000 + 20 * i - (2000 if i >= 40 else 0) for i in range(60)]
    whalefall.database_stats(7, "orders", [(day, size, None) for day, size in zip(_days(60), purged, strict=True)])
    whalefall.database_stats(7, "fresh", [(day, 100, None) for day in _days(10, AS_OF - timedelta(days=9))])

    compute_forecasts(engine, Level.DATABASE, AS_OF, now=NOW)

    fresh, orders = (rows for rows in (_json(engine, database_name="fresh"), _json(engine, database_name="orders")))
    assert orders[0]["change_point_date"] == (START + timedelta(days=40)).isoformat() == "2026-06-11"
    assert (orders[0]["samples_used"], orders[0]["growth_mb_per_day"]) == (20, 20.0)
    assert orders[0]["p50_mb"] == 5000 + 20 * 59 - 2000 + 20 * 30
    assert {row["quality"] for row in fresh} == {"insufficient_data"}
    assert all(
        row[key] is None
        for row in fresh
        for key in ("p10_mb", "p50_mb", "p90_mb", "growth_mb_per_day", "days_to_limit_p50")
    )
    assert fresh[0]["samples_used"] == 10


def test_a_recomputation_rewrites_the_batch(engine, whalefall):
    _growing(whalefall)
    whalefall.database_stats(7, "gone", [(day, 300, None) for day in _days(60)])
    compute_forecasts(engine, Level.DATABASE, AS_OF, now=NOW)
    assert {row["database_name"] for row in _json(engine)} == {"gone", "orders"}

    with engine.begin() as connection:  # the database was dropped and its history purged
        stats = whalefall.tables["database_size_stats"]
        connection.execute(delete(stats).where(stats.c.database_name == "gone"))
    later = NOW + timedelta(hours=1)
    report = compute_forecasts(engine, Level.DATABASE, AS_OF, now=later)

    rows = list(read_forecasts(engine, level=Level.DATABASE))
    assert report.rows_written == len(rows) == 3
    assert {row.database_name for row in rows} == {"orders"} and {row.computed_at for row in rows} == {later}


def test_two_recomputations_at_once_leave_one_copy(pg_engine, pg_whalefall):
    _growing(pg_whalefall, 7)
    _growing(pg_whalefall, 8)
    start, errors = threading.Barrier(2), []

    def recompute() -> None:
        start.wait()
        try:
            compute_forecasts(pg_engine, Level.DATABASE, AS_OF, ForecastOptions(batch_size=1), now=NOW)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=recompute) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(_json(pg_engine, level=Level.DATABASE)) == 6  # two series, three horizons, once each


def test_one_instance_recomputed_leaves_the_others_alone(engine, whalefall):
    _growing(whalefall, 7)
    _growing(whalefall, 8)
    compute_forecasts(engine, Level.DATABASE, AS_OF, now=NOW)
    later = NOW + timedelta(hours=1)
    compute_forecasts(engine, Level.DATABASE, AS_OF, instance_ids=[8], now=later)
    stamps = {(row.instance_id, row.computed_at) for row in read_forecasts(engine, level=Level.DATABASE)}
    assert stamps == {(7, NOW), (8, later)}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=20), st.integers(1, 60))
def test_samples_after_the_as_of_day_change_nothing(engine, whalefall, later_sizes, first_offset):
    if not whalefall.rows("instances", order_by="id"):
        _growing(whalefall)
        compute_forecasts(engine, Level.DATABASE, AS_OF, now=NOW)
    before = _json(engine, level=Level.DATABASE)
    stats = whalefall.tables["database_size_stats"]
    after_days = _days(len(later_sizes), AS_OF + timedelta(days=first_offset))
    whalefall.database_stats(
        7, "orders", [(day, size, None) for day, size in zip(after_days, later_sizes, strict=True)]
    )
    try:
        compute_forecasts(engine, Level.DATABASE, AS_OF, now=NOW)
        assert _json(engine, level=Level.DATABASE) == before
    finally:
        with engine.begin() as connection:
            connection.execute(delete(stats).where(stats.c.collected_date > AS_OF))


def test_the_series_array_has_one_column_per_day_and_nan_for_missing_days(engine, whalefall):
    whalefall.instance(7)
    whalefall.database_stats(7, "b", [(AS_OF, 5, None), (AS_OF - timedelta(days=2), 3, None)])
    whalefall.database_stats(7, "a", [(AS_OF - timedelta(days=3), 1, None), (AS_OF - timedelta(days=9), 9, None)])
    with engine.connect() as connection:
        batch = read_series(connection, Level.DATABASE, [7], AS_OF, 4)
    assert [(key.instance_id, key.database_name) for key in batch.keys] == [(7, "a"), (7, "b")]
    assert batch.first_day == AS_OF - timedelta(days=3) and batch.as_of == AS_OF
    assert pd.DataFrame(batch.values).fillna(-1).values.tolist() == [[1, -1, -1, -1], [-1, 3, -1, 5]]


def test_large_and_negative_sizes_are_read_exactly(engine, whalefall):
    whalefall.instance(7)
    whalefall.instance_stats(7, [(AS_OF, 2_000_000_000, 1), (AS_OF - timedelta(days=1), 0, 1)])  # int4's top
    whalefall.database_stats(7, "big", [(AS_OF, 2**52 - 1, None), (AS_OF - timedelta(days=1), -3, None)])
    with engine.connect() as connection:
        instance = read_series(connection, Level.INSTANCE, [7], AS_OF, 2048)
        database = read_series(connection, Level.DATABASE, [7], AS_OF, 2048)
    assert instance.values[0, -2:].tolist() == [0, 2_000_000_000]
    assert database.values[0, -2:].tolist() == [-3, 2**52 - 1]
    with pytest.raises(InvalidForecastInput, match="history_days"):
        read_series(engine.connect(), Level.INSTANCE, [7], AS_OF, 2049)


def test_a_forecast_is_stored_once_per_series_horizon_and_day(engine, whalefall):
    _growing(whalefall)
    compute_forecasts(engine, Level.INSTANCE, AS_OF, now=NOW)
    forecasts = whalefall.tables["capacity_forecasts"]
    with engine.connect() as connection:
        row = dict(connection.execute(select(forecasts).limit(1)).one()._mapping)
    row.pop("id")
    for level, database_name in ((Level.INSTANCE, None), (Level.DATABASE, "orders")):
        duplicate = pd.DataFrame([{**row, "level": level.value, "database_name": database_name}])
        with pytest.raises(IntegrityError):  # the second copy of an instance row, NULL database name included
            for _ in range(2):
                with engine.begin() as connection:
                    dialect_of(connection).insert_rows(connection, forecasts, duplicate)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(forecasts)).scalar_one() == 3 + 1


def test_reading_back_filters_and_finds_the_latest_as_of_day(engine, whalefall):
    _growing(whalefall)
    for day in (AS_OF - timedelta(days=1), AS_OF):
        compute_forecasts(engine, Level.DATABASE, day, now=NOW)
    assert latest_as_of(engine, Level.DATABASE) == AS_OF and latest_as_of(engine, Level.INSTANCE) is None
    assert {row["as_of_date"] for row in _json(engine)} == {"2026-06-30"}
    assert {row["as_of_date"] for row in _json(engine, as_of=AS_OF - timedelta(days=1))} == {"2026-06-29"}
    assert _json(engine, instance_id=8) == [] and _json(engine, database_name="nope") == []
    with pytest.raises(InvalidForecastInput, match="database_name"):
        list(read_forecasts(engine, level=Level.INSTANCE, database_name="orders"))


def test_the_calibration_ledger_scores_forecasts_whose_horizon_has_passed(engine, whalefall):
    # Two databases on one line (1000 MB + 10 a day from 2026-02-01) until the as-of day 2026-05-31;
    # after it "orders" grows on and "purged" loses 2000 MB.
    whalefall.instance(7)
    as_of, days = date(2026, 5, 31), _days(150, date(2026, 2, 1))
    for name in ("orders", "purged"):
        sizes = [1000 + 10 * i - (2000 if name == "purged" and day > as_of else 0) for i, day in enumerate(days)]
        whalefall.database_stats(7, name, [(day, size, None) for day, size in zip(days, sizes, strict=True)])
    compute_forecasts(engine, Level.DATABASE, as_of, ForecastOptions(horizons=(30, 90)), now=NOW)

    (thirty,) = calibration(engine, AS_OF, level=Level.DATABASE)  # 90 days after as_of have not passed

    assert (thirty.horizon_days, thirty.scored, thirty.inside) == (30, 2, 1)
    assert thirty.inside_percent == 50.0 and thirty.calibrated is False
    # P50 2490 MB for both on 2026-06-30; actual 2490 (orders, 0 % off) and 490 (purged, 2000 / 490 off).
    assert thirty.p50_mape_percent == pytest.approx((0 + 2000 / 490 * 100) / 2)
    assert thirty.first_target == thirty.last_target == date(2026, 6, 30)
    assert calibration(engine, AS_OF - timedelta(days=1), level=Level.DATABASE) == []
    assert calibration(engine, AS_OF, level=Level.DATABASE, since=AS_OF + timedelta(days=1)) == []
    assert calibration(engine, AS_OF, level=Level.INSTANCE) == []


def test_the_fleet_summary_ranks_by_limit_day_then_growth_and_charts_the_nearest(engine, whalefall):
    whalefall.instance(7)
    growth = {"slow": 1, "fast": 50, "limited": 10}
    for name, per_day in growth.items():
        whalefall.database_stats(7, name, [(day, 1000 + per_day * i, None) for i, day in enumerate(_days(60))])
    set_limit(engine, 7, "limited", 2000)  # 1590 + 10 * 41: reached in 41 days
    compute_forecasts(engine, Level.DATABASE, AS_OF, now=NOW)

    summary = fleet_summary(engine, Level.DATABASE, AS_OF, top=2, history_days=30)

    assert (summary.series, summary.forecast) == (3, 3)
    assert [entry.key.database_name for entry in summary.top] == ["limited", "fast"]
    assert summary.top[0].first.days_to_limit_p50 == 41
    # P50 at 30 days: (1000 + 59 * g) + 30 * g for g = 1, 50, 10.
    assert summary.p50_totals_mb[30] == sum(1000 + 89 * g for g in growth.values())
    chart = summary.nearest
    assert chart.key.database_name == "limited" and chart.limit_mb == 2000
    assert chart.history[0] == (AS_OF - timedelta(days=29), 1300.0) and chart.history[-1] == (AS_OF, 1590.0)
    assert [(day, p50) for day, _, p50, _ in chart.band] == [
        (AS_OF + timedelta(days=30), 1890.0),
        (AS_OF + timedelta(days=90), 2490.0),
        (AS_OF + timedelta(days=180), 3390.0),
    ]
    assert fleet_summary(engine, Level.INSTANCE, AS_OF).top == []
