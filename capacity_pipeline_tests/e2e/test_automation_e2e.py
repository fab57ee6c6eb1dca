"""End to end under a real `dagster dev` with its daemon: samples inserted, updated and deleted on
three past days around a month boundary are observed on schedule, and the automation re-aggregates
exactly the partitions those days feed, at every period and both levels, and nothing else. The
tables then equal a full recompute of the same data."""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import text

from capacity_pipeline.defs.partitions import key_for_window, window_for_key
from capacity_pipeline.domain.aggregation.engine import aggregate_period
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today, window_containing
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline_tests.support import (
    AGGREGATION_ASSETS,
    FINISHED,
    PARTITIONS,
    WhaleFallData,
    expected_reaggregation,
    wait_until,
)

TODAY = china_today()
PREVIOUS_MONTH = (TODAY.replace(day=1) - timedelta(days=1)).replace(day=1)
CHANGED_DAYS = (PREVIOUS_MONTH - timedelta(days=1), PREVIOUS_MONTH, PREVIOUS_MONTH + timedelta(days=2))
FIRST_DAY = (CHANGED_DAYS[0] - timedelta(days=8)).replace(day=1)  # a whole month before the changes
OBSERVE_DAYS = (TODAY - FIRST_DAY).days
AUTOMATION = {
    "CAPACITY_OBSERVE_MINUTES": "1",
    "CAPACITY_AUTOMATION_SENSOR_SECONDS": "3",
    "CAPACITY_OBSERVE_DAYS": str(OBSERVE_DAYS),
    "CAPACITY_HEARTBEAT_SECONDS": "1",
}
IGNORED = {"id", "calculated_at", "created_at"}


def _complete_partitions(period: PeriodType) -> list[str]:
    """Every partition from FIRST_DAY whose window has begun: all days, the complete longer periods."""
    keys = []
    window = window_containing(period, FIRST_DAY)
    while window.start <= TODAY:
        if period is PeriodType.DAILY or window.end < TODAY:
            keys.append(key_for_window(window))
        window = window_containing(period, window.end + timedelta(days=1))
    return [key for key in keys if PARTITIONS[period].has_partition_key(key)]


def _aggregate_everything(engine) -> None:  # noqa: ANN001
    """Every complete window, aggregated by the engine itself (the state a deployment starts from)."""
    for period in PeriodType:
        for key in _complete_partitions(period):
            assert not aggregate_period(engine, period, window_for_key(period, key)).failures


def _sensor_ticks(client: DagsterGraphQLClient, name: str) -> int:
    query = """
    query Ticks($selector: SensorSelector!) {
      sensorOrError(sensorSelector: $selector) {
        ... on Sensor { sensorState { ticks(limit: 5) { status } } }
      }
    }"""
    selector = {"repositoryLocationName": "capacity_pipeline", "repositoryName": "__repository__", "sensorName": name}
    try:
        answer = client._execute(query, {"selector": selector})  # noqa: SLF001 - the client has no public tick query
    except Exception:  # noqa: BLE001 - the code location may still be loading
        return 0
    sensor = answer.get("sensorOrError") or {}
    return len(((sensor.get("sensorState") or {}).get("ticks")) or [])


def _completed_ticks(client: DagsterGraphQLClient) -> int:
    """How many of the automation sensor's ticks have ended (the last 100)."""
    query = """
    query Ticks($selector: SensorSelector!) {
      sensorOrError(sensorSelector: $selector) {
        ... on Sensor { sensorState { ticks(limit: 100) { status } } }
      }
    }"""
    selector = {
        "repositoryLocationName": "capacity_pipeline",
        "repositoryName": "__repository__",
        "sensorName": "capacity_automation",
    }
    answer = client._execute(query, {"selector": selector})  # noqa: SLF001 - the client has no public tick query
    ticks = answer["sensorOrError"]["sensorState"]["ticks"]
    return sum(1 for tick in ticks if tick["status"] in ("SUCCESS", "SKIPPED"))


def _calculated_at(engine) -> dict[str, dict[tuple, object]]:  # noqa: ANN001
    """Each aggregation row's calculated_at, by its key."""
    keys = {
        "database_size_aggregations": "instance_id, database_name, period_type, period_start",
        "instance_size_aggregations": "instance_id, period_type, period_start",
    }
    found = {}
    with engine.connect() as connection:
        for table, key in keys.items():
            rows = connection.execute(text(f"SELECT {key}, calculated_at FROM {table}")).all()
            found[table] = {tuple(row[:-1]): row[-1] for row in rows}
    return found


def _materializations_since(instance: dg.DagsterInstance, after: int) -> dict[dg.AssetKey, set[str]]:
    done: dict[dg.AssetKey, set[str]] = {}
    for asset in AGGREGATION_ASSETS.values():
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset.key, after_storage_id=after), limit=1000
        ).records
        if records:
            done[asset.key] = {record.partition_key for record in records}
    return done


def _change_samples(engine) -> dict[Level, set[date]]:  # noqa: ANN001
    inserted, updated, deleted = CHANGED_DAYS
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO database_size_stats (instance_id, database_name, size_mb, data_size_mb, collected_date) "
                "VALUES (1, 'late_import', 2048, 2000, :day)"
            ),
            {"day": inserted},
        )
        connection.execute(
            text("UPDATE instance_size_stats SET total_size_mb = total_size_mb * 2 WHERE collected_date = :day"),
            {"day": updated},
        )
        connection.execute(
            text("DELETE FROM database_size_stats WHERE collected_date = :day AND instance_id = 3"), {"day": deleted}
        )
    return {Level.DATABASE: {inserted, deleted}, Level.INSTANCE: {updated}}


def _tables(whalefall) -> dict[str, list[dict]]:  # noqa: ANN001
    return {
        table: [{k: v for k, v in row.items() if k not in IGNORED} for row in whalefall.rows(table, "id")]
        for table in ("database_size_aggregations", "instance_size_aggregations")
    }


def test_changed_samples_re_aggregate_exactly_the_windows_they_feed(fresh_dagster_dev):
    server = fresh_dagster_dev(**AUTOMATION)
    pg_engine = server.whalefall_engine
    pg_whalefall = WhaleFallData(pg_engine)
    spec = SyntheticSpec(5, 3, OBSERVE_DAYS + 10, TODAY, seed=31, inactive_share=0, deleted_share=0)
    load_synthetic_data(pg_engine, spec)
    # A deployment's first start: every window aggregated (by WhaleFall, or the nightly run), the
    # samples never observed. The daemon starts straight away: no observation beforehand.
    _aggregate_everything(pg_engine)
    server.start()
    client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
    wait_until(lambda: _sensor_ticks(client, "capacity_automation") >= 1, 90, "the automation's first tick", interval=1)
    with server.instance() as instance:
        before = instance.event_log_storage.get_maximum_record_id()
        # The first observation adopts the samples as aggregated: automation has nothing to do.
        _observe(client, instance)
        _wait_for_ticks(client, instance, 2)
        assert _materializations_since(instance, before) == {}
        assert [run for run in instance.get_runs() if run.asset_selection] == []

    calculated = _calculated_at(pg_engine)
    changed = _change_samples(pg_engine)
    expected = expected_reaggregation(changed, TODAY, current_periods=False)
    with server.instance() as instance:
        _observe(client, instance)  # the schedule observes every minute; "Observe sources" does it at once

        def settled() -> bool:
            done = _materializations_since(instance, before)
            in_flight = instance.get_runs(
                filters=dg.RunsFilter(statuses=[s for s in dg.DagsterRunStatus if s not in FINISHED])
            )
            return done == expected and not [run for run in in_flight if run.asset_selection]

        wait_until(settled, 240, "the affected partitions to be re-materialized", interval=1)
        _wait_for_ticks(client, instance, 2)  # more automation ticks: nothing else may follow
        assert _materializations_since(instance, before) == expected
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert failed == []

    # Only the changed instances' rows were rewritten: instance 1 (an insert) and 3 (a delete) at
    # the database level; every instance at the instance level (the update touched them all).
    rewritten = {
        table: {key[0] for key, at in rows.items() if at != calculated[table].get(key)}
        for table, rows in _calculated_at(pg_engine).items()
    }
    assert rewritten == {"database_size_aggregations": {1, 3}, "instance_size_aggregations": {1, 2, 3, 4, 5}}
    # The rows equal a full recompute of every window from the same samples.
    automated = _tables(pg_whalefall)
    _aggregate_everything(pg_engine)
    assert _tables(pg_whalefall) == automated


def _observe(client: DagsterGraphQLClient, instance: dg.DagsterInstance) -> None:
    """Both observation jobs, as "Observe sources" runs them, and wait until they succeeded."""
    runs = [
        client.submit_job_execution(job, repository_location_name="capacity_pipeline")
        for job in ("observe_capacity_samples", "observe_quarterly_baselines")
    ]
    for run_id in runs:
        status = wait_until(
            lambda run_id=run_id: (run := instance.get_run_by_id(run_id)) and run.is_finished and run.status,
            90,
            "an observation run ending",
            interval=0.5,
        )
        assert status == dg.DagsterRunStatus.SUCCESS


def _wait_for_ticks(client: DagsterGraphQLClient, instance: dg.DagsterInstance, count: int) -> None:
    """`count` more completed automation ticks (each evaluates every condition once)."""
    seen = _completed_ticks(client)
    wait_until(lambda: _completed_ticks(client) >= seen + count, 60, f"{count} more automation ticks", interval=0.5)
