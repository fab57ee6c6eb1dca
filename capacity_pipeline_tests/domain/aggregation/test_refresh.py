"""A refresh re-aggregates only the instances whose samples changed, and its rows are a full recompute's.

The state machine interleaves inserts, updates and deletes of samples (both tables, several
instances, across a month and a quarter boundary) with refreshes done the way the automation does
them (observe, then for every window a changed day feeds, re-aggregate the instances changed since
the window's mark), and after each refresh compares every window with a full recompute of the same
samples, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import date, timedelta

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import Engine, text

from capacity_pipeline.domain.aggregation.engine import aggregate_windows
from capacity_pipeline.domain.aggregation.follow import refresh_fed_windows
from capacity_pipeline.domain.aggregation.refresh import plan_refresh, stale_windows
from capacity_pipeline.domain.model import Level, WindowPlan
from capacity_pipeline.domain.periods import PeriodType, Window, window_containing, windows_fed_by
from capacity_pipeline.domain.samples.changes import observe_changes
from capacity_pipeline.domain.samples.instances import list_active_instances
from capacity_pipeline_tests.support import WhaleFallData

FIRST, LAST = date(2026, 3, 27), date(2026, 4, 3)  # a month and a quarter boundary
OBSERVED = Window(date(2026, 3, 1), LAST)
DAYS = [FIRST + timedelta(days=n) for n in range((LAST - FIRST).days + 1)]
INSTANCES = (1, 2, 3)
IGNORED = {"id", "calculated_at", "created_at", "updated_at"}


def _windows() -> dict[PeriodType, list[Window]]:
    """Every window a sample day feeds, per period."""
    found: dict[PeriodType, set[Window]] = {}
    for period in PeriodType:
        for day in DAYS:
            found.setdefault(period, set()).update(windows_fed_by(period, day))
    return {period: sorted(windows, key=lambda w: w.start) for period, windows in found.items()}


WINDOWS = _windows()
ALL_PLANS = [WindowPlan(period, window, tuple(Level)) for period, windows in WINDOWS.items() for window in windows]


def _load(whalefall: WhaleFallData) -> None:
    for instance_id in INSTANCES:
        whalefall.instance(instance_id)
        whalefall.database_stats(
            instance_id, "orders", [(day, 100 * instance_id + n, 90) for n, day in enumerate(DAYS)]
        )
        whalefall.database_stats(instance_id, "users", [(day, 10 + n, None) for n, day in enumerate(DAYS)])
        whalefall.instance_stats(instance_id, [(day, 1000 * instance_id + 3 * n, 2) for n, day in enumerate(DAYS)])


def _rows(engine: Engine) -> dict[str, list[tuple]]:
    tables = {}
    with engine.connect() as connection:
        for table in ("database_size_aggregations", "instance_size_aggregations"):
            result = connection.execute(text(f"SELECT * FROM {table}"))
            keys = [key for key in result.keys() if key not in IGNORED]  # noqa: SIM118 - a Result, not a dict
            rows = [tuple(str(row._mapping[key]) for key in keys) for row in result]
            tables[table] = sorted(rows)
    return tables


def _full_recompute(engine: Engine) -> None:
    """Every window for every active instance, without moving any mark (instances given, no cursor)."""
    reports = aggregate_windows(engine, ALL_PLANS, instances=list_active_instances(engine))
    assert not any(report.failures for report in reports)


def refresh_changed(engine: Engine) -> dict[tuple[Level, PeriodType, Window], frozenset[int] | None]:
    """What the automation does: observe, then refresh every window a changed day feeds (one run
    per level and window, as each asset's condition fires), each for the instances changed since
    its mark. Returns what each refresh re-aggregated (None: whole)."""
    done = {}
    for level in Level:
        observation = observe_changes(engine, level, OBSERVED)
        for refreshed in refresh_fed_windows(engine, level, observation.changed):
            assert not refreshed.report.failures
            plan = refreshed.refresh.plan
            done[(level, plan.period, plan.window)] = refreshed.instance_ids
    return done


class RefreshMatchesFullRecompute(RuleBasedStateMachine):
    engine: Engine  # set by the test, per dialect

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as connection:
            for table in (
                "capacity_window_marks",
                "capacity_sample_changes",
                "capacity_sample_observations",
                "capacity_sample_versions",
                "database_size_aggregations",
                "instance_size_aggregations",
                "database_size_stats",
                "instance_size_stats",
                "instances",
            ):
                connection.execute(text(f"DELETE FROM {table}"))
        self.whalefall = WhaleFallData(self.engine)
        _load(self.whalefall)
        assert not any(r.failures for r in aggregate_windows(self.engine, ALL_PLANS))  # marks every window
        for level in Level:
            assert observe_changes(self.engine, level, OBSERVED).first
        self.pending = False
        self.refreshed = 0

    def _execute(self, sql: str, **params: object) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(sql), params)
        self.pending = True

    @rule(instance=st.sampled_from(INSTANCES), day=st.sampled_from(DAYS), size=st.integers(1, 10_000))
    def insert_database_sample(self, instance: int, day: date, size: int) -> None:
        """A database's sample of the day (a new database, or its sample written again)."""
        name = f"db_{size % 7}"
        self._execute(
            "DELETE FROM database_size_stats WHERE instance_id = :i AND database_name = :n AND collected_date = :d",
            i=instance,
            n=name,
            d=day,
        )
        self.whalefall.database_stats(instance, name, [(day, size, size // 2)])

    @rule(instance=st.sampled_from(INSTANCES), day=st.sampled_from(DAYS), delta=st.integers(-50, 500))
    def update_database_samples(self, instance: int, day: date, delta: int) -> None:
        self._execute(
            "UPDATE database_size_stats SET size_mb = size_mb + :delta WHERE instance_id = :i AND collected_date = :d",
            delta=delta,
            i=instance,
            d=day,
        )

    @rule(instance=st.sampled_from(INSTANCES), day=st.sampled_from(DAYS))
    def delete_database_samples(self, instance: int, day: date) -> None:
        self._execute(
            "DELETE FROM database_size_stats WHERE instance_id = :i AND collected_date = :d", i=instance, d=day
        )

    @rule(instance=st.sampled_from(INSTANCES), day=st.sampled_from(DAYS), total=st.integers(1, 100_000))
    def write_instance_sample(self, instance: int, day: date, total: int) -> None:
        """An update of the day's sample, or an insert when there is none (one per instance and day)."""
        with self.engine.begin() as connection:
            updated = connection.execute(
                text(
                    "UPDATE instance_size_stats SET total_size_mb = :t WHERE instance_id = :i AND collected_date = :d"
                ),
                {"t": total, "i": instance, "d": day},
            ).rowcount
        if not updated:
            self.whalefall.instance_stats(instance, [(day, total, 1)])
        self.pending = True

    @rule(instance=st.sampled_from(INSTANCES), day=st.sampled_from(DAYS))
    def delete_instance_sample(self, instance: int, day: date) -> None:
        self._execute(
            "DELETE FROM instance_size_stats WHERE instance_id = :i AND collected_date = :d", i=instance, d=day
        )

    @precondition(lambda self: self.pending)
    @rule()
    def refresh(self) -> None:
        done = refresh_changed(self.engine)
        assert all(ids is not None for ids in done.values())  # every window was marked: never whole
        self.pending = False
        self.refreshed += 1
        expected = _rows(self.engine)
        _full_recompute(self.engine)
        assert _rows(self.engine) == expected

    @invariant()
    def nothing_is_stale_after_a_refresh(self) -> None:
        if self.pending:
            return
        for level in Level:
            for period, windows in WINDOWS.items():
                assert stale_windows(self.engine, level, period, windows) == []


def test_a_refresh_of_what_changed_equals_a_full_recompute(engine):
    RefreshMatchesFullRecompute.engine = engine
    runner = RefreshMatchesFullRecompute.TestCase()
    runner.settings = settings(
        max_examples=8,
        stateful_step_count=10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    runner.runTest()


def test_a_refresh_takes_only_the_changed_instances_and_days_the_window_reads(engine):
    whalefall = WhaleFallData(engine)
    _load(whalefall)
    assert not any(r.failures for r in aggregate_windows(engine, ALL_PLANS))
    for level in Level:
        observe_changes(engine, level, OBSERVED)
    april = window_containing(PeriodType.MONTHLY, date(2026, 4, 1))
    plan = WindowPlan(PeriodType.MONTHLY, april, (Level.DATABASE,))
    assert plan_refresh(engine, plan).changed == {}

    with engine.begin() as connection:  # instance 2 on the last day of March: April compares with it
        connection.execute(
            text("UPDATE database_size_stats SET size_mb = 1 WHERE instance_id = 2 AND collected_date = '2026-03-31'")
        )
    observe_changes(engine, Level.DATABASE, OBSERVED)
    refresh = plan_refresh(engine, plan)
    assert refresh.changed == {2: (date(2026, 3, 31),)} and refresh.instance_ids == {2}
    assert "samples changed for 1 of 3 instance(s)" in refresh.describe(3)
    assert [w.period_start for w in stale_windows(engine, Level.DATABASE, PeriodType.MONTHLY, [april])] == [april.start]
    # The instance level did not change; a quarter that does not read March 31 (Q3 reads April-May) neither.
    assert plan_refresh(engine, WindowPlan(PeriodType.MONTHLY, april, (Level.INSTANCE,))).changed == {}
    q3 = window_containing(PeriodType.QUARTERLY, date(2026, 7, 1))
    assert plan_refresh(engine, WindowPlan(PeriodType.QUARTERLY, q3, (Level.DATABASE,))).changed == {}

    instances = [i for i in list_active_instances(engine) if i.id == 2]
    aggregate_windows(engine, [plan], instances=instances, changes_through=refresh.through)
    assert plan_refresh(engine, plan).changed == {}
    assert stale_windows(engine, Level.DATABASE, PeriodType.MONTHLY, [april]) == []


def test_a_window_never_aggregated_since_changes_are_followed_is_refreshed_whole(engine):
    whalefall = WhaleFallData(engine)
    _load(whalefall)
    plan = WindowPlan(PeriodType.DAILY, Window(LAST, LAST), tuple(Level))
    refresh = plan_refresh(engine, plan)
    assert refresh.whole and refresh.instance_ids is None
    assert "never aggregated" in refresh.describe(3)
