"""Upsert rules, input selection, batches, checkpoints and failure isolation (compat 2, 5, Q11, Q17)."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from capacity_pipeline.domain.aggregation.engine import aggregate_period
from capacity_pipeline.domain.model import Level, Outcome, Scope
from capacity_pipeline.domain.periods import PeriodType, Window
from capacity_pipeline.domain.samples.instances import list_active_instances
from capacity_pipeline_tests.support import row_trigger

DAY = date(2026, 6, 10)
DAILY = Window(DAY, DAY)
MONTH = Window(date(2026, 6, 1), date(2026, 6, 30))


def _seed_instance(whalefall, instance_id: int, *, size: int = 100, **flags) -> None:
    whalefall.instance(instance_id, **flags)
    whalefall.database_stats(instance_id, "app", [(DAY, size, size), (DAY - timedelta(days=1), size - 1, None)])
    whalefall.instance_stats(instance_id, [(DAY, size, 1), (DAY - timedelta(days=1), size - 1, 1)])


def _fixed_clock(moment: datetime):
    return lambda: moment


def test_rerun_changes_nothing_but_calculated_at(engine, whalefall):
    for instance_id in (1, 2, 3):
        _seed_instance(whalefall, instance_id, size=100 * instance_id)
    first_time = datetime(2026, 6, 11, 1, 0, tzinfo=UTC)
    later = datetime(2026, 6, 11, 2, 0, tzinfo=UTC)
    aggregate_period(engine, PeriodType.DAILY, DAILY, now=_fixed_clock(first_time))
    before = {t: whalefall.rows(t, "id") for t in ("database_size_aggregations", "instance_size_aggregations")}

    report = aggregate_period(engine, PeriodType.DAILY, DAILY, now=_fixed_clock(later))

    assert report.rows_written(Level.DATABASE) == 3 and report.rows_written(Level.INSTANCE) == 3
    for table, rows in before.items():
        after = whalefall.rows(table, "id")
        assert [r["calculated_at"] for r in after] == [later] * 3
        assert [r["created_at"] for r in after] == [first_time] * 3
        strip = [{k: v for k, v in r.items() if k != "calculated_at"} for r in after]
        assert strip == [{k: v for k, v in r.items() if k != "calculated_at"} for r in rows]


def test_rerun_keeps_period_end_and_id_and_updates_metrics(engine, whalefall):
    """Spec Q8: period_end is never rewritten, even when the window's end differs."""
    _seed_instance(whalefall, 1)
    aggregate_period(engine, PeriodType.WEEKLY, Window(DAY, DAY))
    [first] = whalefall.rows("database_size_aggregations")
    whalefall.database_stats(1, "app", [(DAY + timedelta(days=1), 300, 300)])

    aggregate_period(engine, PeriodType.WEEKLY, Window(DAY, DAY + timedelta(days=1)))

    [second] = whalefall.rows("database_size_aggregations")
    assert second["id"] == first["id"]
    assert second["period_end"] == DAY  # the first window's end survives
    assert (second["avg_size_mb"], second["max_size_mb"], second["data_count"]) == (200, 300, 2)


def test_rows_are_never_deleted(engine, whalefall):
    """A database without stats in a re-run keeps its row; so does an instance gone inactive."""
    _seed_instance(whalefall, 1)
    whalefall.database_stats(1, "dropped", [(DAY, 5, 5)])
    aggregate_period(engine, PeriodType.DAILY, DAILY)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM database_size_stats WHERE database_name = 'dropped'"))
        connection.execute(text("UPDATE instances SET is_active = false WHERE id = 1"))

    report = aggregate_period(engine, PeriodType.DAILY, DAILY)

    assert report.instances_total == 0
    assert sorted(r["database_name"] for r in whalefall.rows("database_size_aggregations")) == [
        "app",
        "dropped",
    ]
    assert len(whalefall.rows("instance_size_aggregations")) == 1


def test_only_active_instances_are_aggregated(engine, whalefall):
    _seed_instance(whalefall, 1)
    _seed_instance(whalefall, 2, active=False)
    _seed_instance(whalefall, 3, deleted=True)
    _seed_instance(whalefall, 4, active=False, deleted=True)
    whalefall.instance(5)  # active, but without any stats: skipped, nothing written

    report = aggregate_period(engine, PeriodType.DAILY, DAILY)

    assert [i.id for i in list_active_instances(engine)] == [1, 5]
    assert {o.instance.id: o.status for o in report.outcomes} == {1: Outcome.COMPLETED, 5: Outcome.SKIPPED}
    assert {r["instance_id"] for r in whalefall.rows("database_size_aggregations")} == {1}
    assert {r["instance_id"] for r in whalefall.rows("instance_size_aggregations")} == {1}


def test_window_bounds_are_inclusive(engine, whalefall):
    whalefall.instance(1)
    whalefall.database_stats(
        1, "app", [(date(2026, 5, 31), 1, 1), (date(2026, 6, 1), 10, 10), (date(2026, 6, 30), 30, 30)]
    )
    whalefall.database_stats(1, "app", [(date(2026, 7, 1), 1000, 1000)])

    aggregate_period(engine, PeriodType.MONTHLY, MONTH, scope=Scope.DATABASE)

    [row] = whalefall.rows("database_size_aggregations")
    assert (row["data_count"], row["min_size_mb"], row["max_size_mb"], row["avg_size_mb"]) == (2, 10, 30, 20)
    assert row["size_change_mb"] == 19  # previous window (May) holds only 05-31's 1 MB


@pytest.mark.parametrize(
    ("scope", "tables"),
    [
        (Scope.DATABASE, {"database_size_aggregations"}),
        (Scope.INSTANCE, {"instance_size_aggregations"}),
        (Scope.ALL, {"database_size_aggregations", "instance_size_aggregations"}),
    ],
)
def test_scope_selects_the_levels(engine, whalefall, scope, tables):
    _seed_instance(whalefall, 1)
    aggregate_period(engine, PeriodType.DAILY, DAILY, scope=scope)
    written = {t for t in ("database_size_aggregations", "instance_size_aggregations") if whalefall.rows(t)}
    assert written == tables


def test_after_batch_sees_each_batch_and_can_stop_the_work(engine, whalefall):
    for instance_id in range(1, 8):
        _seed_instance(whalefall, instance_id)
    seen = []

    def after_batch(batch):
        [outcomes] = batch.outcomes.values()
        seen.append((batch.number, batch.total, [o.instance.id for o in outcomes]))
        return batch.number < 2

    report = aggregate_period(engine, PeriodType.DAILY, DAILY, batch_size=3, after_batch=after_batch)

    assert seen == [(1, 3, [1, 2, 3]), (2, 3, [4, 5, 6])]
    assert report.stopped and report.instances_not_run == 1
    assert sorted({r["instance_id"] for r in whalefall.rows("instance_size_aggregations")}) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert report.summary()["instances"] == {
        "total": 7,
        "processed": 6,
        "skipped": 0,
        "failed": 0,
        "not_run": 1,
    }


def test_failure_in_a_later_batch_keeps_earlier_batches_and_isolates_the_instance(engine, whalefall):
    for instance_id in range(1, 6):
        _seed_instance(whalefall, instance_id)
    # A real database error for instance 4's instance-level row.
    with row_trigger(engine, "instance_size_aggregations", "NEW.instance_id = 4", error="disk quota exceeded"):
        report = aggregate_period(engine, PeriodType.DAILY, DAILY, batch_size=2)

    statuses = {o.instance.id: o.status for o in report.outcomes}
    assert statuses == {1: "completed", 2: "completed", 3: "completed", 4: "failed", 5: "completed"}
    [failed] = [o for o in report.outcomes if o.status is Outcome.FAILED]
    assert "disk quota exceeded" in failed.error
    # Instance 4's database-level rows were in the same transaction: nothing half-written.
    assert {r["instance_id"] for r in whalefall.rows("database_size_aggregations")} == {1, 2, 3, 5}
    assert {r["instance_id"] for r in whalefall.rows("instance_size_aggregations")} == {1, 2, 3, 5}
    assert report.summary()["failures"] == [{"instance_id": 4, "instance_name": "instance-4", "error": failed.error}]


def test_concurrent_runs_on_the_same_period_both_succeed(engine, whalefall):
    """Spec Q17: two runs racing on the same period never fail on unique violations."""
    for instance_id in range(1, 41):
        _seed_instance(whalefall, instance_id, size=50 + instance_id)
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(aggregate_period(engine, PeriodType.DAILY, DAILY, batch_size=5))
        except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [r.count(Outcome.FAILED) for r in reports] == [0, 0, 0]
    assert len(whalefall.rows("database_size_aggregations")) == 40
    assert len(whalefall.rows("instance_size_aggregations")) == 40


def test_a_bad_batch_size_is_rejected_before_anything_is_written(engine, whalefall):
    _seed_instance(whalefall, 1)
    with pytest.raises(ValueError, match="batch_size: must be at least 1"):
        aggregate_period(engine, PeriodType.DAILY, DAILY, batch_size=0)
    assert whalefall.rows("database_size_aggregations") == []


def test_new_rows_take_ids_in_whalefall_write_order(engine, whalefall):
    """WhaleFall writes instance by instance in id order; its lists page by period_start, then id
    descending, so ids decide which rows its first page shows."""
    for instance_id in (3, 1, 2):  # inserted out of order
        whalefall.instance(instance_id)
        for name in ("zz", "aa", "mm"):
            whalefall.database_stats(instance_id, name, [(DAY, 100 * instance_id, None)])
        whalefall.instance_stats(instance_id, [(DAY, 300 * instance_id, 3)])

    aggregate_period(engine, PeriodType.DAILY, DAILY, batch_size=2)

    databases = whalefall.rows("database_size_aggregations", "id")
    assert [(r["instance_id"], r["database_name"]) for r in databases] == [
        (i, name) for i in (1, 2, 3) for name in ("aa", "mm", "zz")
    ]
    assert [r["instance_id"] for r in whalefall.rows("instance_size_aggregations", "id")] == [1, 2, 3]
