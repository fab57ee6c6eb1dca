"""The change log: which instance's samples changed on which day, observed on both dialects."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import text

from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import Window
from capacity_pipeline.domain.samples.changes import last_change, observe_changes

DAYS = Window(date(2026, 3, 28), date(2026, 4, 3))


def _load(whalefall) -> None:  # noqa: ANN001
    for instance_id in (1, 2, 3):
        whalefall.instance(instance_id)
        days = [DAYS.start + timedelta(days=n) for n in range(DAYS.days)]
        whalefall.database_stats(
            instance_id, "orders", [(day, 100 * instance_id + n, 90) for n, day in enumerate(days)]
        )
        whalefall.instance_stats(instance_id, [(day, 1000 * instance_id, 1) for day in days])


def _changed(observation) -> set[tuple[int, date]]:  # noqa: ANN001
    return {(i, day) for day, changes in observation.changed.items() for i in changes.instance_ids}


def test_the_first_observation_records_versions_and_logs_no_change(engine, whalefall):
    _load(whalefall)
    first = observe_changes(engine, Level.DATABASE, DAYS)
    assert first.first and first.instance_days == 3 * DAYS.days and first.changed == {}
    assert "first observation" in first.describe()
    again = observe_changes(engine, Level.DATABASE, DAYS)
    assert not again.first and again.changed == {} and last_change(engine) == 0


def test_the_first_observation_of_an_empty_table_still_counts_as_first(engine, whalefall):
    """Samples that arrive after a first observation that saw none are changes, not a new baseline."""
    assert observe_changes(engine, Level.INSTANCE, DAYS).first
    whalefall.instance(1)
    whalefall.instance_stats(1, [(DAYS.end, 10, 1)])
    observation = observe_changes(engine, Level.INSTANCE, DAYS)
    assert not observation.first and _changed(observation) == {(1, DAYS.end)}


def test_inserts_updates_and_deletes_are_logged_per_instance_and_day(engine, whalefall):
    _load(whalefall)
    observe_changes(engine, Level.DATABASE, DAYS)
    observe_changes(engine, Level.INSTANCE, DAYS)
    inserted, updated, deleted = date(2026, 3, 31), date(2026, 4, 1), date(2026, 3, 29)
    whalefall.database_stats(2, "late_import", [(inserted, 5, None)])
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE database_size_stats SET size_mb = size_mb + 1 WHERE instance_id = 3 AND collected_date = :d"),
            {"d": updated},
        )
        connection.execute(
            text("DELETE FROM database_size_stats WHERE instance_id = 1 AND collected_date = :d"), {"d": deleted}
        )
        connection.execute(  # every sample of a day gone is a change too
            text("DELETE FROM instance_size_stats WHERE collected_date = :d"), {"d": DAYS.end}
        )

    database = observe_changes(engine, Level.DATABASE, DAYS)
    instance = observe_changes(engine, Level.INSTANCE, DAYS)

    assert _changed(database) == {(2, inserted), (3, updated), (1, deleted)}
    assert _changed(instance) == {(1, DAYS.end), (2, DAYS.end), (3, DAYS.end)}
    assert database.changed[inserted].last_change < instance.changed[DAYS.end].last_change == last_change(engine)
    assert last_change(engine, Level.DATABASE) == max(d.last_change for d in database.changed.values())
    assert observe_changes(engine, Level.DATABASE, DAYS).changed == {}  # recorded: not logged twice


def test_days_before_the_observed_range_are_forgotten(engine, whalefall):
    _load(whalefall)
    observe_changes(engine, Level.DATABASE, DAYS)
    later = Window(date(2026, 4, 1), DAYS.end)
    observe_changes(engine, Level.DATABASE, later)
    with engine.connect() as connection:
        oldest = connection.execute(text("SELECT min(collected_date) FROM capacity_sample_versions")).scalar_one()
    assert str(oldest) == "2026-04-01"
    assert observe_changes(engine, Level.DATABASE, later).changed == {}


def test_days_a_wider_range_adds_are_adopted_not_logged(engine, whalefall):
    """Raising CAPACITY_OBSERVE_DAYS brings in days never observed: they are not changes (the
    roll-ups of those days stand), while a change inside the range seen before still is."""
    _load(whalefall)
    narrow = Window(date(2026, 4, 1), DAYS.end)
    observe_changes(engine, Level.INSTANCE, narrow)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE instance_size_stats SET total_size_mb = 1 WHERE instance_id = 2 AND collected_date = :d"),
            {"d": date(2026, 4, 2)},
        )
    wider = observe_changes(engine, Level.INSTANCE, DAYS)
    assert _changed(wider) == {(2, date(2026, 4, 2))}
    assert wider.instance_days == 3 * DAYS.days
    assert observe_changes(engine, Level.INSTANCE, DAYS).changed == {}  # the adopted days are recorded now
