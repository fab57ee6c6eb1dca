"""The worked examples of compat 4, as exact assertions, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from capacity_pipeline.domain.aggregation.engine import aggregate_period
from capacity_pipeline.domain.model import Scope
from capacity_pipeline.domain.periods import PeriodType, Window

WEEK = Window(date(2026, 6, 22), date(2026, 6, 28))
JUNE = Window(date(2026, 6, 1), date(2026, 6, 30))


def _days(start: date, count: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(count)]


def test_database_level_weekly_example(engine, whalefall):
    """Spec 4.1: instance 7, database orders, week 2026-06-22..28."""
    whalefall.instance(7)
    current = zip([1000, 1010, 1020, 1030, 1041], [800, 805, None, 815, 820], strict=True)
    whalefall.database_stats(
        7, "orders", [(day, s, d) for day, (s, d) in zip(_days(WEEK.start, 5), current, strict=True)]
    )
    previous = zip([950, 960, 970], [760, 770, 780], strict=True)
    whalefall.database_stats(
        7,
        "orders",
        [(day, s, d) for day, (s, d) in zip(_days(date(2026, 6, 15), 3), previous, strict=True)],
    )

    report = aggregate_period(engine, PeriodType.WEEKLY, WEEK, scope=Scope.DATABASE)

    assert report.rows_written(report.scope.levels[0]) == 1
    [row] = whalefall.rows("database_size_aggregations")
    assert {k: row[k] for k in row if k not in ("id", "calculated_at", "created_at")} == {
        "instance_id": 7,
        "database_name": "orders",
        "period_type": "weekly",
        "period_start": date(2026, 6, 22),
        "period_end": date(2026, 6, 28),
        "avg_size_mb": 1020,
        "max_size_mb": 1041,
        "min_size_mb": 1000,
        "data_count": 5,
        "avg_data_size_mb": 810,
        "max_data_size_mb": 820,
        "min_data_size_mb": 800,
        "avg_log_size_mb": None,
        "max_log_size_mb": None,
        "min_log_size_mb": None,
        "size_change_mb": 60,
        "size_change_percent": Decimal("6.25"),
        "data_size_change_mb": 40,
        "data_size_change_percent": Decimal("5.19"),
        "log_size_change_mb": None,
        "log_size_change_percent": None,
        "growth_rate": Decimal("6.25"),
    }


def test_database_level_shrinking_truncates_toward_zero(engine, whalefall):
    """Spec 4.1: current truncated average 90 against a previous average of 100.5."""
    whalefall.instance(1)
    whalefall.database_stats(1, "shrinking", [(date(2026, 6, 10), 90, 90)])
    whalefall.database_stats(1, "shrinking", [(date(2026, 6, 9), 100, 100), (date(2026, 6, 8), 101, 101)])

    aggregate_period(engine, PeriodType.DAILY, Window(date(2026, 6, 10), date(2026, 6, 10)))
    # The daily previous window of a one-day window is the day before: only 06-09 (100).
    [row] = whalefall.rows("database_size_aggregations")
    assert (row["size_change_mb"], row["size_change_percent"]) == (-10, Decimal("-10.00"))

    # A two-day window compares with the two days before it.
    aggregate_period(engine, PeriodType.WEEKLY, Window(date(2026, 6, 10), date(2026, 6, 11)))
    rows = {r["period_end"]: r for r in whalefall.rows("database_size_aggregations", "id")}
    two_day = rows[date(2026, 6, 11)]
    # previous window 06-08..06-09 averages 100.5; int(90 - 100.5) = -10, not -11
    assert two_day["size_change_mb"] == -10
    assert two_day["size_change_percent"] == Decimal("-10.45")
    assert two_day["growth_rate"] == Decimal("-10.45")


def test_database_level_without_previous_rows_writes_zero_changes(engine, whalefall):
    whalefall.instance(1)
    whalefall.database_stats(1, "fresh", [(date(2026, 6, 10), 500, None)], log_size_mb=40)

    aggregate_period(engine, PeriodType.DAILY, Window(date(2026, 6, 10), date(2026, 6, 10)))

    [row] = whalefall.rows("database_size_aggregations")
    assert row["avg_data_size_mb"] is None and row["max_data_size_mb"] is None
    assert row["avg_log_size_mb"] is None  # compat Q5: log sizes are never aggregated
    changes = (
        row["size_change_mb"],
        row["size_change_percent"],
        row["data_size_change_mb"],
        row["data_size_change_percent"],
        row["log_size_change_mb"],
        row["log_size_change_percent"],
        row["growth_rate"],
    )
    assert changes == (0, 0, 0, 0, 0, 0, 0)


def test_database_level_null_data_sizes_and_zero_previous(engine, whalefall):
    """Data change is 0 (not NULL) when either side has no data size; a zero previous gives 0%."""
    whalefall.instance(1)
    whalefall.database_stats(1, "no_data", [(date(2026, 6, 10), 300, None)])
    whalefall.database_stats(1, "no_data", [(date(2026, 6, 9), 200, 150)])
    whalefall.database_stats(1, "was_empty", [(date(2026, 6, 10), 10, 10)])
    whalefall.database_stats(1, "was_empty", [(date(2026, 6, 9), 0, 0)])

    aggregate_period(engine, PeriodType.DAILY, Window(date(2026, 6, 10), date(2026, 6, 10)))

    rows = {r["database_name"]: r for r in whalefall.rows("database_size_aggregations")}
    no_data = rows["no_data"]
    assert (no_data["size_change_mb"], no_data["size_change_percent"]) == (100, Decimal("50.00"))
    assert (no_data["data_size_change_mb"], no_data["data_size_change_percent"]) == (0, 0)
    assert (no_data["log_size_change_mb"], no_data["log_size_change_percent"]) == (None, None)
    was_empty = rows["was_empty"]
    assert (was_empty["size_change_mb"], was_empty["size_change_percent"]) == (10, 0)
    assert (was_empty["data_size_change_mb"], was_empty["data_size_change_percent"]) == (10, 0)


def test_percent_rounds_like_python_on_binary_ties(engine, whalefall):
    """Spec 4: round(0.125, 2) == 0.12 (half-even on the binary value), not 0.13."""
    whalefall.instance(1)
    # d = 1, P = 800 -> 1 / 800 * 100 == 0.125 exactly in binary.
    whalefall.database_stats(1, "tie", [(date(2026, 6, 10), 801, 801)])
    whalefall.database_stats(1, "tie", [(date(2026, 6, 9), 800, 800)])
    assert round(1 / 800 * 100, 2) == 0.12

    aggregate_period(engine, PeriodType.DAILY, Window(date(2026, 6, 10), date(2026, 6, 10)))

    [row] = whalefall.rows("database_size_aggregations")
    assert row["size_change_percent"] == Decimal("0.12")


def test_instance_level_monthly_example(engine, whalefall):
    """Spec 4.2: instance 7, June 2026, compared with May."""
    whalefall.instance(7)
    whalefall.instance_stats(
        7, [(date(2026, 6, 1), 10000, 10), (date(2026, 6, 2), 10300, 10), (date(2026, 6, 3), 10600, 11)]
    )
    whalefall.instance_stats(7, [(date(2026, 5, 10), 9000, 9), (date(2026, 5, 11), 9500, 10)])

    report = aggregate_period(engine, PeriodType.MONTHLY, JUNE, scope=Scope.INSTANCE)

    assert report.outcomes[0].records_read == {report.scope.levels[0]: 3}
    [row] = whalefall.rows("instance_size_aggregations")
    assert {k: row[k] for k in row if k not in ("id", "calculated_at", "created_at")} == {
        "instance_id": 7,
        "period_type": "monthly",
        "period_start": date(2026, 6, 1),
        "period_end": date(2026, 6, 30),
        "total_size_mb": 10300,
        "avg_size_mb": 996,
        "max_size_mb": 10600,
        "min_size_mb": 10000,
        "data_count": 3,
        "database_count": 10,
        "avg_database_count": Decimal("10.33"),
        "max_database_count": 11,
        "min_database_count": 10,
        "total_size_change_mb": 1050,
        "total_size_change_percent": Decimal("11.35"),
        "database_count_change": 0,
        "database_count_change_percent": Decimal("8.77"),
        "growth_rate": Decimal("11.35"),
        "trend_direction": "growing",
    }


def test_instance_level_trend_uses_strict_thresholds_on_rounded_percent(engine, whalefall):
    """Exactly +5.00% is stable; -5.01% is shrinking; no previous rows is stable with zeros."""
    day, previous_day = date(2026, 6, 10), date(2026, 6, 9)
    for instance_id, (current, previous) in enumerate([(105, 100), (9499, 10000), (1, None)], start=1):
        whalefall.instance(instance_id)
        whalefall.instance_stats(instance_id, [(day, current, 1)])
        if previous is not None:
            whalefall.instance_stats(instance_id, [(previous_day, previous, 1)])

    aggregate_period(engine, PeriodType.DAILY, Window(day, day), scope=Scope.INSTANCE)

    rows = {r["instance_id"]: r for r in whalefall.rows("instance_size_aggregations")}
    assert (rows[1]["total_size_change_percent"], rows[1]["trend_direction"]) == (Decimal("5.00"), "stable")
    assert (rows[2]["total_size_change_percent"], rows[2]["trend_direction"]) == (
        Decimal("-5.01"),
        "shrinking",
    )
    fresh = rows[3]
    assert (fresh["total_size_change_mb"], fresh["growth_rate"], fresh["trend_direction"]) == (
        0,
        0,
        "stable",
    )


def test_instance_level_sums_same_day_rows_and_ignores_soft_deleted(engine, whalefall):
    """Rows of one day are summed before averaging; is_deleted rows are not read (compat 2, 4.2)."""
    whalefall.instance(1)
    day = date(2026, 6, 10)
    whalefall.instance_stats(1, [(day, 100, 2)])
    whalefall.instance_stats(1, [(day, 999_999, 50)], is_deleted=True)

    report = aggregate_period(engine, PeriodType.DAILY, Window(day, day), scope=Scope.INSTANCE)

    [row] = whalefall.rows("instance_size_aggregations")
    assert (row["total_size_mb"], row["database_count"], row["avg_size_mb"], row["data_count"]) == (
        100,
        2,
        50,
        1,
    )
    assert report.outcomes[0].records_read[report.scope.levels[0]] == 1


def test_avg_database_count_is_rounded_half_up_by_postgresql(engine, whalefall):
    """Spec Q3: avg_database_count 10.125 is stored as 10.13 (PostgreSQL), unlike round() (10.12)."""
    whalefall.instance(1)
    counts = [10, 10, 10, 10, 10, 10, 10, 11]  # mean 10.125, exact in binary
    whalefall.instance_stats(1, [(date(2026, 6, 1 + i), 100, c) for i, c in enumerate(counts)])

    aggregate_period(engine, PeriodType.MONTHLY, JUNE, scope=Scope.INSTANCE)

    [row] = whalefall.rows("instance_size_aggregations")
    assert row["avg_database_count"] == Decimal("10.13")
