"""End to end under a real `dagster dev` with its daemon: an automated re-aggregation whose
database connections are killed (pg_terminate_backend, as a PostgreSQL restart would) fails, and
`capacity_refresh_retries` runs it again after its backoff, which settles the window: a later
successful materialization of that partition, and a run center that agrees with Dagster.

The test holds the window's advisory lock (the one the engine serialises its writers on, compat
Q17), so the run's backend is found waiting on it in pg_stat_activity and terminated each time it
reconnects; with a short statement timeout (the engine's reconnect budget) the run fails within
seconds. Once it has failed the lock is released and the retry runs freely.
"""

from __future__ import annotations

import time
from datetime import timedelta

import dagster as dg
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import select, text

from capacity_pipeline.defs.aggregation.assets import asset_key
from capacity_pipeline.defs.aggregation.retries import SENSOR_NAME
from capacity_pipeline.defs.run_center.tags import REFRESH_ATTEMPT_TAG, REFRESH_CHANGED, REFRESH_TAG, RETRY_OF_TAG
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.storage.tables import tables_for
from capacity_pipeline_tests.support import (
    FINISHED,
    assert_run_center_consistent,
    code_location_definitions,
    observe_samples,
    submit_job,
    wait_until,
)

TODAY = china_today()
YESTERDAY = TODAY - timedelta(days=1)
KEY = YESTERDAY.isoformat()
DAILY = asset_key(Level.INSTANCE, PeriodType.DAILY)
LOCK_KEY = f"capacity_pipeline.{Level.INSTANCE.table}.{PeriodType.DAILY.value}.{KEY}"  # the engine's (compat Q17)
OBSERVE_DAYS = 3
SETTINGS = {
    "CAPACITY_AUTOMATION_SENSOR_SECONDS": "2",
    "CAPACITY_OBSERVE_DAYS": str(OBSERVE_DAYS),
    "CAPACITY_REFRESH_RETRIES": "2",
    "CAPACITY_REFRESH_RETRY_SECONDS": "2",
    # The engine retries a lost connection for as long as the statement timeout: 3 s here.
    "CAPACITY_STATEMENT_TIMEOUT_SECONDS": "3",
    "CAPACITY_HEARTBEAT_SECONDS": "1",
}
TERMINATE_WAITERS = text(
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = 'capacity_pipeline' AND wait_event_type = 'Lock' AND wait_event = 'advisory' "
    "AND pid <> pg_backend_pid()"
)


def _automated_run(instance: dg.DagsterInstance) -> dg.DagsterRun | None:
    """The automation's run of yesterday's daily instance-level partition (not a retry)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={REFRESH_TAG: REFRESH_CHANGED, "dagster/partition": KEY}))
    ours = [run for run in runs if DAILY in (run.asset_selection or ()) and RETRY_OF_TAG not in run.tags]
    return ours[0] if ours else None


def test_an_automated_run_whose_connections_are_killed_is_retried_and_its_window_settles(fresh_dagster_dev):
    server = fresh_dagster_dev(**SETTINGS)
    engine = server.whalefall_engine
    load_synthetic_data(engine, SyntheticSpec(5, 2, OBSERVE_DAYS + 40, TODAY, seed=7, inactive_share=0))
    with server.instance() as instance:  # the rollout: observed once before the daemon starts
        observe_samples(code_location_definitions(engine, observe_days=OBSERVE_DAYS), instance)
    server.start()
    client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)

    with server.instance() as instance, engine.connect() as holder:
        holder.begin()
        holder.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": LOCK_KEY})
        with engine.begin() as connection:  # a sample of yesterday is corrected
            connection.execute(
                text("UPDATE instance_size_stats SET total_size_mb = total_size_mb + 5 WHERE collected_date = :day"),
                {"day": YESTERDAY},
            )
        submit_job(
            client,
            time.monotonic() + 60,
            job_name="observe_capacity_samples",
            repository_location_name="capacity_pipeline",
        )
        run = wait_until(lambda: _automated_run(instance), 60, "the automation's run of yesterday", interval=0.5)

        terminated = []

        def failed() -> bool:
            with engine.connect() as killer:
                terminated.append(killer.execute(TERMINATE_WAITERS).scalar())
            return instance.get_run_by_id(run.run_id).status in FINISHED

        wait_until(failed, 60, "the automated run to end", interval=0.1)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert sum(terminated) >= 1
        holder.rollback()  # the database is back to normal

        def retried() -> dg.DagsterRun | None:
            [retry, *_] = instance.get_runs(filters=dg.RunsFilter(tags={RETRY_OF_TAG: run.run_id})) or [None]
            return retry if retry is not None and retry.status in FINISHED else None

        retry = wait_until(retried, 60, "the retry of the failed run to end", interval=0.5)
        assert retry.status == dg.DagsterRunStatus.SUCCESS, server.tail()
        assert (retry.tags[REFRESH_ATTEMPT_TAG], retry.tags["dagster/sensor_name"]) == ("1", SENSOR_NAME)
        assert retry.tags["dagster/partition"] == KEY and DAILY in retry.asset_selection

        # The window settled: its latest materialization is the retry's, after the failure.
        ended = instance.get_run_record_by_id(run.run_id).end_time
        [latest] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DAILY, asset_partitions=[KEY], after_timestamp=ended), limit=1
        ).records
        assert latest.run_id == retry.run_id

        def quiet() -> bool:  # every run of the pipeline has ended
            return not instance.get_runs(
                filters=dg.RunsFilter(statuses=[s for s in dg.DagsterRunStatus if s not in FINISHED])
            )

        wait_until(quiet, 60, "every run to end", interval=0.5)
        runs = tables_for(engine).tables["task_runs"]
        with engine.connect() as connection:
            task_run_ids = list(connection.execute(select(runs.c.run_id)).scalars())
        assert {run.run_id, retry.run_id} <= set(task_run_ids)
        assert_run_center_consistent(engine, instance, task_run_ids)
        center = RunCenter(engine)
        failed_task, retry_task = center.get_run(run.run_id), center.get_run(retry.run_id)
        assert (failed_task["status"], failed_task["trigger_source"]) == ("failed", "scheduled")
        assert (retry_task["status"], retry_task["trigger_source"]) == ("completed", "scheduled")
        assert "administrator command" in (failed_task["error_message"] or ""), failed_task["error_message"]
