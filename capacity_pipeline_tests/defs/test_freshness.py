"""Roll-ups that follow their inputs: observed samples, true dependencies, exact automation.

Observations and automation evaluations run for real (in process, on a real Dagster instance and
PostgreSQL); the partitions automation must request are computed here from WhaleFall's period
rules (compat 3), independently of Dagster's partition mappings.
"""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace

import dagster as dg
import pytest
from sqlalchemy import text

from capacity_pipeline.defs.aggregation.assets import aggregation_selection, asset_key
from capacity_pipeline.defs.aggregation.automation import build_automation_sensor
from capacity_pipeline.defs.aggregation.freshness import CHECK_NAME
from capacity_pipeline.defs.definitions import build_defs
from capacity_pipeline.defs.partitions import key_for_window
from capacity_pipeline.defs.run_center.tags import TRIGGER_SOURCE_TAG
from capacity_pipeline.defs.samples.sources import baseline_key, stats_key
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, Window, china_today, previous_window, window_containing
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.samples.versions import quarterly_baselines
from capacity_pipeline_tests.support import (
    AGGREGATION_ASSETS,
    TEST_SETTINGS,
    code_location_definitions,
    expected_reaggregation,
    observe_samples,
    resolve_job,
)

AGGREGATION_TABLES = ("database_size_aggregations", "instance_size_aggregations")

TODAY = china_today()
PREVIOUS_QUARTER = window_containing(
    PeriodType.QUARTERLY, window_containing(PeriodType.QUARTERLY, TODAY).start - timedelta(days=1)
)
OBSERVE_DAYS = (TODAY - PREVIOUS_QUARTER.start).days  # the observed range starts on that quarter's first day


def _versions(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, str]:
    """The latest data version recorded per partition."""
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key), limit=10_000).records
    versions: dict[str, str] = {}
    for record in records:  # newest first
        observation = record.asset_observation
        versions.setdefault(observation.partition, observation.tags["dagster/data_version"])
    return versions


def _observation_count(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    return len(instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key), limit=10_000).records)


@pytest.fixture
def samples(pg_engine, pg_whalefall):  # noqa: ANN001, ANN201
    spec = SyntheticSpec(6, 3, OBSERVE_DAYS + 5, TODAY, seed=21, inactive_share=0, deleted_share=0)
    load_synthetic_data(pg_engine, spec)
    return pg_whalefall


def _change_three_days(engine) -> dict[Level, set[date]]:  # noqa: ANN001
    """An insert, an update and a delete on three past days around a month boundary."""
    boundary = PREVIOUS_QUARTER.start.replace(month=PREVIOUS_QUARTER.start.month + 2)  # the quarter's third month
    inserted, updated, deleted = boundary - timedelta(days=1), boundary, boundary + timedelta(days=2)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO database_size_stats (instance_id, database_name, size_mb, data_size_mb, collected_date) "
                "VALUES (1, 'late_import', 4096, 4000, :day)"
            ),
            {"day": inserted},
        )
        connection.execute(
            text("UPDATE instance_size_stats SET total_size_mb = total_size_mb + 7 WHERE collected_date = :day"),
            {"day": updated},
        )
        connection.execute(
            text("DELETE FROM database_size_stats WHERE collected_date = :day AND instance_id = 2"), {"day": deleted}
        )
    return {Level.DATABASE: {inserted, deleted}, Level.INSTANCE: {updated}}


def _expected(changed: dict[Level, set[date]], *, current_periods: bool) -> dict[dg.AssetKey, set[str]]:
    return expected_reaggregation(changed, TODAY, current_periods=current_periods)


def test_an_observation_records_only_the_days_that_changed(pg_engine, samples, dagster_instance):
    definitions = code_location_definitions(pg_engine, observe_days=OBSERVE_DAYS)
    observe_samples(definitions, dagster_instance)  # the first: versions recorded, nothing is a change
    assert _observation_count(dagster_instance, stats_key(Level.DATABASE)) == 0
    observe_samples(definitions, dagster_instance)  # nothing changed
    assert _observation_count(dagster_instance, stats_key(Level.DATABASE)) == 0

    changed = _change_three_days(pg_engine)
    with pg_engine.begin() as connection:  # a day whose samples are all deleted changes too
        gone = PREVIOUS_QUARTER.start + timedelta(days=3)
        connection.execute(text("DELETE FROM database_size_stats WHERE collected_date = :day"), {"day": gone})
    observe_samples(definitions, dagster_instance)

    versions = _versions(dagster_instance, stats_key(Level.DATABASE))
    assert set(versions) == {d.isoformat() for d in changed[Level.DATABASE]} | {gone.isoformat()}
    assert all(version.startswith("change-") for version in versions.values())
    assert set(_versions(dagster_instance, stats_key(Level.INSTANCE))) == {
        d.isoformat() for d in changed[Level.INSTANCE]
    }
    observe_samples(definitions, dagster_instance)  # recorded once: not again
    assert _observation_count(dagster_instance, stats_key(Level.DATABASE)) == 3


SAMPLE_PARTITIONS = {
    PeriodType.DAILY: "2026-03-01",
    PeriodType.WEEKLY: "2026-03-02",
    PeriodType.MONTHLY: "2026-03-01",
    PeriodType.QUARTERLY: "2026-07-01",  # compares with Apr-May only (compat Q1)
}


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize("period", list(PeriodType))
def test_the_lineage_maps_a_partition_to_exactly_the_days_it_reads(level, period):
    graph = build_defs(TEST_SETTINGS).resolve_asset_graph()
    key = SAMPLE_PARTITIONS[period]
    window = window_containing(period, date.fromisoformat(key))
    previous = previous_window(period, window)
    child = asset_key(level, period)

    def upstream(parent: dg.AssetKey) -> set[str]:
        return set(graph.get_parent_partition_keys_for_child(key, parent, child).partitions_subset.get_partition_keys())

    if period is not PeriodType.QUARTERLY:
        assert graph.get(child).parent_keys == {stats_key(level)}
        assert upstream(stats_key(level)) == {day.isoformat() for day in _days(window) | _days(previous)}
        return
    # A quarter reads its own days, and the baseline partition of the quarter before it, whose days
    # are WhaleFall's previous window of this quarter.
    assert graph.get(child).parent_keys == {stats_key(level), baseline_key(level)}
    assert upstream(stats_key(level)) == {day.isoformat() for day in _days(window)}
    [baseline] = upstream(baseline_key(level))
    observed = Window(date.fromisoformat(baseline), window.end)
    assert quarterly_baselines(observed, corrected_quarter=False)[date.fromisoformat(baseline)] == previous
    assert previous == Window(date(2026, 4, 1), date(2026, 5, 31))


def _days(window: Window) -> set[date]:
    return {window.start + timedelta(days=n) for n in range(window.days)}


def test_a_changed_day_re_aggregates_exactly_the_windows_it_feeds(pg_engine, samples, dagster_instance):
    definitions = code_location_definitions(pg_engine, observe_days=OBSERVE_DAYS)
    observe_samples(definitions, dagster_instance)
    first = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance)
    assert first.total_requested == 0  # nothing changed since the automation began

    changed = _change_three_days(pg_engine)
    observe_samples(definitions, dagster_instance)
    result = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance, cursor=first.cursor)

    requested = _requested(result)
    assert requested == _expected(changed, current_periods=False)
    again = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance, cursor=result.cursor)
    assert again.total_requested == 0  # requested once, not on every tick


def test_with_current_periods_on_the_quarter_in_progress_follows_only_the_days_it_compares_with(
    pg_engine, samples, dagster_instance
):
    """Spec Q1: a quarter compares with the first two months of the quarter before (outside Q1), so
    a change in that quarter's third month re-aggregates it, but not the quarter after."""
    settings = TEST_SETTINGS.with_changes(automate_current_periods=True)
    definitions = code_location_definitions(pg_engine, settings, observe_days=OBSERVE_DAYS)
    observe_samples(definitions, dagster_instance)
    first = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance)

    changed = _change_three_days(pg_engine)
    observe_samples(definitions, dagster_instance)
    result = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance, cursor=first.cursor)

    requested = _requested(result)
    assert requested == _expected(changed, current_periods=True)
    quarter = window_containing(PeriodType.QUARTERLY, TODAY)
    this_quarter = key_for_window(quarter)
    # The update on the first day of the previous quarter's third month (instance level) reaches
    # this quarter only in Q1, which compares with the whole quarter before; Q2-Q4 compare with its
    # first two months (compat Q1).
    in_q1 = quarter.start.month == 1
    assert (this_quarter in requested.get(asset_key(Level.INSTANCE, PeriodType.QUARTERLY), set())) is in_q1
    # The insert on the last day of its second month (database level) reaches it in every quarter.
    assert this_quarter in requested[asset_key(Level.DATABASE, PeriodType.QUARTERLY)]


def _calculated_at(engine, table: str, day: date) -> dict[int, set]:  # noqa: ANN001
    with engine.connect() as connection:
        rows = connection.execute(
            text(f"SELECT instance_id, calculated_at FROM {table} WHERE period_type = 'daily' AND period_start = :d"),
            {"d": day},
        ).all()
    found: dict[int, set] = {}
    for instance_id, calculated_at in rows:
        found.setdefault(instance_id, set()).add(calculated_at)
    return found


def test_an_automated_run_re_aggregates_only_the_changed_instances_and_says_why(pg_engine, samples, dagster_instance):
    day = TODAY - timedelta(days=3)
    key, daily = day.isoformat(), [asset_key(level, PeriodType.DAILY) for level in Level]
    job = resolve_job(pg_engine, "__ASSET_JOB")
    assert job.execute_in_process(instance=dagster_instance, partition_key=key, asset_selection=daily).success
    definitions = code_location_definitions(pg_engine, observe_days=OBSERVE_DAYS)
    observe_samples(definitions, dagster_instance)
    before = {table: _calculated_at(pg_engine, table, day) for table in AGGREGATION_TABLES}
    with pg_engine.begin() as connection:
        connection.execute(
            text("UPDATE database_size_stats SET size_mb = size_mb + 5 WHERE instance_id = 4 AND collected_date = :d"),
            {"d": day},
        )
    observe_samples(definitions, dagster_instance)
    stale = _freshness(dagster_instance, daily[0])
    assert stale.status.value == "FAILED" and stale.metadata["stale_windows"].value >= 1
    assert f"{key}: 1 instance(s) changed on {key}" in stale.metadata["windows"].value
    assert _freshness(dagster_instance, daily[1]).status.value == "SUCCEEDED"  # its samples did not change

    automation_tags = dict(build_automation_sensor(TEST_SETTINGS, aggregation_selection()).run_tags)
    result = job.execute_in_process(
        instance=dagster_instance, partition_key=key, asset_selection=daily, tags=automation_tags
    )

    assert result.success
    # Only instance 4's database rows are rewritten; its instance-level samples did not change.
    for table, rewritten in zip(AGGREGATION_TABLES, ({4}, set()), strict=True):
        after = _calculated_at(pg_engine, table, day)
        assert {i for i in after if after[i] != before[table][i]} == rewritten, table
    instance_level = result.asset_materializations_for_node(daily[1].to_python_identifier())[0].metadata
    assert instance_level["instances_reaggregated"].value == 0
    assert instance_level["changed_days"].value == "none at this level"
    metadata = result.asset_materializations_for_node(daily[0].to_python_identifier())[0].metadata
    assert metadata["instances_reaggregated"].value == 1 and metadata["instances_in_scope"].value == 6
    assert metadata["changed_days"].value == f"instance 4: {key}"
    assert metadata["trigger"].value.startswith("samples changed for 1 of 6 instance(s) on 1 day(s)")
    task_run = RunCenter(pg_engine).get_run(result.run_id)
    assert task_run["progress_total"] == 1 and task_run["status"] == "completed"
    data = task_run["summary_json"]["ext"]["data"]
    assert (data["instances_reaggregated"], data["instances_in_scope"]) == (1, 6)
    assert "instance 4" in data["refresh_reason"]
    # The daily window is fresh again (the next day's, which compares with it, is refreshed by its own run).
    still_stale = _freshness(dagster_instance, daily[0]).metadata["windows"].value.splitlines()
    assert not [line for line in still_stale if line.startswith(f"{key}:")], still_stale

    again = job.execute_in_process(instance=dagster_instance, partition_key=key, asset_selection=daily)
    metadata = again.asset_materializations_for_node(daily[0].to_python_identifier())[0].metadata
    assert metadata["instances_reaggregated"].value == 6  # by hand: the whole scope
    assert "the whole scope" in metadata["trigger"].value


@dg.op
def _noop() -> None:
    pass


@dg.job
def _background_job() -> None:
    _noop()


def test_while_the_run_queue_is_full_of_background_runs_a_change_waits_and_is_then_requested(
    pg_engine, samples, dagster_instance
):
    """CAPACITY_AUTOMATION_MAX_QUEUED: no request while that many background runs wait; the change
    stays pending (not handled) and is requested once the queue has room: delayed, never lost."""
    settings = TEST_SETTINGS.with_changes(automation_max_queued=2)
    definitions = code_location_definitions(pg_engine, settings, observe_days=OBSERVE_DAYS)
    observe_samples(definitions, dagster_instance)
    first = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance)
    background = {TRIGGER_SOURCE_TAG: "scheduled"}
    queued = [dagster_instance.create_run_for_job(_background_job, tags=background) for _ in range(2)]  # NOT_STARTED
    dagster_instance.create_run_for_job(_background_job)  # a person's run in the queue does not count

    changed = _change_three_days(pg_engine)
    observe_samples(definitions, dagster_instance)
    full = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance, cursor=first.cursor)
    assert full.total_requested == 0
    still_full = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance, cursor=full.cursor)
    assert still_full.total_requested == 0

    dagster_instance.report_run_canceled(queued[0])  # one leaves the queue: room for more
    room = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance, cursor=still_full.cursor)
    requested = _requested(room)
    assert requested == _expected(changed, current_periods=False)
    again = dg.evaluate_automation_conditions(defs=definitions, instance=dagster_instance, cursor=room.cursor)
    assert again.total_requested == 0


def _requested(evaluation: dg.EvaluateAutomationConditionsResult) -> dict[dg.AssetKey, set[str]]:
    """The roll-up partitions an automation evaluation requested, per asset."""
    return {
        asset.key: partitions
        for asset in AGGREGATION_ASSETS.values()
        if (partitions := set(evaluation.get_requested_partitions(asset.key)))
    }


def _freshness(instance: dg.DagsterInstance, key: dg.AssetKey):  # noqa: ANN202
    """The latest evaluation of the roll-up's freshness check, or None."""
    record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(key, CHECK_NAME))
    if record is None or record.event is None:
        return None
    evaluation = record.event.dagster_event.event_specific_data
    return SimpleNamespace(status=record.status, metadata=evaluation.metadata)
