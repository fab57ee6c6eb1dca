"""Checks on every path: a materialization from any path has its checks evaluated on the partition it
wrote; the checks also run alone (the UI's Checks tab), with or without a partition."""

from __future__ import annotations

from datetime import date

import dagster as dg
from sqlalchemy import text

from capacity_pipeline.defs.aggregation.assets import asset_key
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline_tests.support import AGGREGATION_ASSETS, dagster_resources, resolve_job, row_trigger

DAY = date(2026, 7, 1)
KEY = DAY.isoformat()


def _seed(whalefall) -> None:  # noqa: ANN001
    whalefall.instance(1, "zeta")
    whalefall.instance(2, "alpha")
    for instance_id in (1, 2):
        whalefall.database_stats(instance_id, "app", [(DAY, 100, 90), (date(2026, 6, 30), 90, 80)])
        whalefall.instance_stats(instance_id, [(DAY, 100, 1), (date(2026, 6, 30), 90, 1)])


def _evaluations(instance: dg.DagsterInstance, key: dg.AssetKey, name: str) -> list:
    check = dg.AssetCheckKey(key, name)
    return instance.event_log_storage.get_asset_check_execution_history(check, limit=20)


def test_the_nightly_run_evaluates_the_checks_of_every_partition_it_writes(pg_engine, pg_whalefall, dagster_instance):
    _seed(pg_whalefall)
    result = resolve_job(pg_engine, "calculate_database").execute_in_process(
        run_config={"ops": {"aggregate_last_periods": {"config": {"today": "2026-07-02"}}}}, instance=dagster_instance
    )
    assert result.success

    for level in Level:
        for period, partition in ((PeriodType.DAILY, KEY), (PeriodType.MONTHLY, "2026-06-01")):
            [record] = _evaluations(dagster_instance, asset_key(level, period), "coverage")
            assert (record.partition, record.status.value) == (partition, "SUCCEEDED"), (level, period)


def test_negative_samples_are_flagged_naming_the_instances(engine, whalefall, dagster_instance):
    _seed(whalefall)
    with engine.begin() as connection:
        connection.execute(text("UPDATE database_size_stats SET size_mb = -500 WHERE instance_id = 2"))
    daily = [AGGREGATION_ASSETS[level, PeriodType.DAILY] for level in Level]

    result = dg.materialize(daily, partition_key=KEY, resources=dagster_resources(engine), instance=dagster_instance)

    assert result.success  # a failed check warns; the rows are written
    verdicts = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
    flagged = verdicts[asset_key(Level.DATABASE, PeriodType.DAILY), "no_negative_input"]
    assert not flagged.passed and flagged.metadata["instances"].value == "2 (alpha)"
    assert flagged.severity == dg.AssetCheckSeverity.WARN
    assert verdicts[asset_key(Level.INSTANCE, PeriodType.DAILY), "no_negative_input"].passed


def test_the_checks_run_alone_with_a_partition_or_on_the_latest_one_without(pg_engine, pg_whalefall, dagster_instance):
    _seed(pg_whalefall)
    key = asset_key(Level.INSTANCE, PeriodType.DAILY)
    day_before = date(2026, 6, 30).isoformat()
    for partition in (day_before, KEY):  # the latest materialized is KEY
        materialized = dg.materialize(
            [AGGREGATION_ASSETS[Level.INSTANCE, PeriodType.DAILY]],
            partition_key=partition,
            resources=dagster_resources(pg_engine),
            instance=dagster_instance,
        )
        assert materialized.success
    checks_alone = resolve_job(pg_engine, "__ASSET_JOB").get_subset(
        asset_selection=set(),
        asset_check_selection=set(AGGREGATION_ASSETS[Level.INSTANCE, PeriodType.DAILY].check_keys),
    )

    with_partition = checks_alone.execute_in_process(instance=dagster_instance, tags={"dagster/partition": KEY})
    without_partition = checks_alone.execute_in_process(instance=dagster_instance)  # "Execute all" on the Checks tab
    with_range = checks_alone.execute_in_process(
        instance=dagster_instance,
        tags={"dagster/asset_partition_range_start": day_before, "dagster/asset_partition_range_end": KEY},
    )

    assert with_partition.success and without_partition.success and with_range.success
    history = _evaluations(dagster_instance, key, "coverage")
    # 2 materializations, checks with the partition, checks without (on the latest partition, and
    # its own result), checks over the range (each partition, and the range's own result)
    expected = [day_before, KEY, KEY, KEY, "None", day_before, KEY, "None"]
    assert sorted(str(record.partition) for record in history) == sorted(expected)
    assert all(record.status.value == "SUCCEEDED" for record in history)  # none left PLANNED (unevaluated)
    [summary] = [
        e for e in without_partition.get_asset_check_evaluations() if e.partition is None and e.check_name == "coverage"
    ]
    assert summary.metadata["checked_partitions"].value == KEY


def test_a_run_where_an_instance_fails_still_evaluates_its_checks(engine, whalefall, dagster_instance):
    """Instance 1 fails to write (a trigger refuses its row), instance 2 has a negative sample: the
    run fails, and its checks still look at what was written and flag the negative sample."""
    _seed(whalefall)
    with engine.begin() as connection:
        connection.execute(text("UPDATE database_size_stats SET size_mb = -500 WHERE instance_id = 2"))
    daily = [AGGREGATION_ASSETS[level, PeriodType.DAILY] for level in Level]

    with row_trigger(engine, "database_size_aggregations", "NEW.instance_id = 1", error="disk quota exceeded"):
        result = dg.materialize(
            daily,
            partition_key=KEY,
            resources=dagster_resources(engine),
            instance=dagster_instance,
            raise_on_error=False,
        )

    assert not result.success
    # Every check of both assets was evaluated on the partition, none left planned.
    for level in Level:
        for name in ("min_avg_max", "no_negative_counts", "coverage", "no_negative_input"):
            [record] = _evaluations(dagster_instance, asset_key(level, PeriodType.DAILY), name)
            assert record.partition == KEY and record.status.value in ("SUCCEEDED", "FAILED"), (level, name)
    [record] = _evaluations(dagster_instance, asset_key(Level.DATABASE, PeriodType.DAILY), "no_negative_input")
    flagged = record.event.dagster_event.event_specific_data
    assert record.run_id == result.run_id and record.status.value == "FAILED"
    assert not flagged.passed and flagged.metadata["instances"].value == "2 (alpha)"


def test_a_nightly_run_where_an_instance_fails_still_evaluates_its_checks(pg_engine, pg_whalefall, dagster_instance):
    _seed(pg_whalefall)
    with pg_engine.begin() as connection:
        connection.execute(text("UPDATE database_size_stats SET size_mb = -500 WHERE instance_id = 2"))
    with row_trigger(pg_engine, "instance_size_aggregations", "NEW.instance_id = 1", error="disk quota exceeded"):
        result = resolve_job(pg_engine, "calculate_database").execute_in_process(
            run_config={"ops": {"aggregate_last_periods": {"config": {"today": "2026-07-02"}}}},
            instance=dagster_instance,
            raise_on_error=False,
        )

    assert not result.success
    [record] = _evaluations(dagster_instance, asset_key(Level.DATABASE, PeriodType.DAILY), "no_negative_input")
    assert (record.partition, record.status.value) == (KEY, "FAILED")
    assert record.event.dagster_event.event_specific_data.metadata["instances"].value == "2 (alpha)"
