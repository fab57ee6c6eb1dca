"""End to end under a real `dagster dev` (daemon running, PostgreSQL storage, the production
dagster.yaml): cancelling from the run center, terminating from Dagster, a run worker that dies,
the whole `dagster dev` group killed and started again, and a run stuck behind a table lock."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import date

import dagster as dg
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import text

from capacity_pipeline.defs.aggregation.jobs import NIGHTLY_OP_NAME
from capacity_pipeline.defs.run_center.reconciler import reconcile
from capacity_pipeline.defs.run_center.tags import NIGHTLY_JOB_NAME, TASK_RUN_TAG
from capacity_pipeline.domain.model import Scope
from capacity_pipeline.domain.periods import china_today
from capacity_pipeline.domain.run_center.settle import Cancelled, settle
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.run_center.triggers import request_current_aggregation
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline_tests.support import (
    assert_run_center_consistent,
    dagster_resources,
    submit_job,
    wait_for_run,
    wait_until,
    whalefall_cancel,
)

TODAY = date(2026, 7, 2)
BEFORE_START = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING)
# A server of its own for the test that kills it: one worker silent for 8 s is dead.
KILLABLE = {
    "CAPACITY_BATCH_SIZE": "1",
    "CAPACITY_BATCH_PAUSE_SECONDS": "1",
    "CAPACITY_HEARTBEAT_SECONDS": "1",
    "CAPACITY_HEARTBEAT_TIMEOUT_SECONDS": "8",
    "CAPACITY_AUTOMATION": "off",
}


def _launch_slow_nightly(dagster_dev, pg_engine) -> tuple[DagsterGraphQLClient, str, RunCenter]:  # noqa: ANN001
    load_synthetic_data(
        pg_engine,
        SyntheticSpec(instances=12, databases=2, days=40, end_date=TODAY, seed=9, inactive_share=0, deleted_share=0),
    )
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev.port)
    run_id = submit_job(
        client,
        time.monotonic() + 60,
        job_name=NIGHTLY_JOB_NAME,
        repository_location_name="capacity_pipeline",
        run_config={"ops": {NIGHTLY_OP_NAME: {"config": {"today": TODAY.isoformat()}}}},
    )
    center = RunCenter(pg_engine)
    wait_until(lambda: (center.get_run(run_id) or {}).get("progress_completed", 0) >= 2, 90, f"progress of {run_id}")
    return client, run_id, center


def _wait_for_task_run(center: RunCenter, run_id: str, status: str, timeout: float) -> None:
    wait_until(lambda: center.status(run_id) == status, timeout, f"TaskRun {run_id} becoming {status}")


def _assert_cancelled_with_batches_intact(center: RunCenter, run_id: str, whalefall) -> None:  # noqa: ANN001
    run, items = center.get_run(run_id), center.get_items(run_id)
    completed = [i for i in items if i["status"] == "completed"]
    assert run["status"] == "cancelled" and run["completed_at"] is not None
    assert completed and len(completed) < len(items)
    assert all(i["status"] in ("completed", "cancelled") for i in items)
    assert (run["progress_completed"], run["progress_failed"]) == (len(completed), len(items) - len(completed))
    daily = {r["instance_id"] for r in whalefall.rows("instance_size_aggregations") if r["period_type"] == "daily"}
    assert {i["instance_id"] for i in completed} <= daily  # the committed batches stay committed


def _dagster_run_of(instance: dg.DagsterInstance, task_run_id: str) -> dg.DagsterRun | None:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={TASK_RUN_TAG: task_run_id}), limit=1)
    return runs[0] if runs else None


def test_cancel_in_the_run_center_ends_the_dagster_run_canceled(dagster_dev, pg_engine, pg_whalefall):
    client, run_id, center = _launch_slow_nightly(dagster_dev, pg_engine)

    assert whalefall_cancel(pg_engine, run_id)  # what WhaleFall's cancel endpoint does
    cancelled_at = time.monotonic()
    status = wait_for_run(client, run_id, timeout=30)

    assert status == dg.DagsterRunStatus.CANCELED, dagster_dev.tail()
    assert time.monotonic() - cancelled_at < 10
    _assert_cancelled_with_batches_intact(center, run_id, pg_whalefall)
    with dagster_dev.instance() as instance:
        assert_run_center_consistent(pg_engine, instance, [run_id])


def test_terminating_in_dagster_cancels_the_task_run(dagster_dev, pg_engine, pg_whalefall):
    client, run_id, center = _launch_slow_nightly(dagster_dev, pg_engine)

    client.terminate_run(run_id)
    terminated_at = time.monotonic()

    assert wait_for_run(client, run_id, timeout=30) == dg.DagsterRunStatus.CANCELED
    _wait_for_task_run(center, run_id, "cancelled", timeout=10 - (time.monotonic() - terminated_at))
    _assert_cancelled_with_batches_intact(center, run_id, pg_whalefall)
    with dagster_dev.instance() as instance:
        assert_run_center_consistent(pg_engine, instance, [run_id])


def test_a_killed_run_worker_fails_the_task_run(dagster_dev, pg_engine, pg_whalefall):
    client, run_id, center = _launch_slow_nightly(dagster_dev, pg_engine)
    with dagster_dev.instance() as instance:
        messages = [entry.message for entry in instance.all_logs(run_id)]
    [pid] = [int(m) for text_ in messages for m in re.findall(r"Started process for run \(pid: (\d+)\)", text_)]

    os.kill(pid, signal.SIGKILL)

    assert wait_for_run(client, run_id, timeout=60) == dg.DagsterRunStatus.FAILURE
    _wait_for_task_run(center, run_id, "failed", timeout=30)
    run, items = center.get_run(run_id), center.get_items(run_id)
    # Dagster's own event guesses "usually out of memory"; the worker's last heartbeat tells better.
    message = run["error_message"]
    assert message.startswith(f"Dagster run {run_id} failed: its worker process (pid {pid}) was killed by signal 9")
    assert "not short of memory" in message
    with dagster_dev.instance() as instance:
        assert any(f"Run center: {message}" == entry.message for entry in instance.all_logs(run_id))
    assert {i["status"] for i in items} <= {"completed", "failed"}
    failed = [i for i in items if i["status"] == "failed"]
    assert failed and {i["error_message"] for i in failed} == {run["error_message"]}
    with dagster_dev.instance() as instance:
        assert_run_center_consistent(pg_engine, instance, [run_id])


def test_killing_the_whole_dagster_dev_mid_run_fails_the_run_after_restart_and_frees_its_slot(
    fresh_dagster_dev,
):
    dagster_dev = fresh_dagster_dev(**KILLABLE).start()
    pg_engine = dagster_dev.whalefall_engine
    load_synthetic_data(
        pg_engine,
        SyntheticSpec(
            instances=10, databases=2, days=5, end_date=china_today(), seed=2, inactive_share=0, deleted_share=0
        ),
    )
    center = RunCenter(pg_engine)
    first = request_current_aggregation(pg_engine, Scope.INSTANCE, created_by=1)
    wait_until(lambda: (center.get_run(first) or {}).get("progress_completed", 0) >= 2, 90, "the run to be working")

    dagster_dev.kill()  # webserver, daemon, code server and run worker die together
    killed_at = time.monotonic()
    dagster_dev.start()

    with dagster_dev.instance() as instance:
        run = _dagster_run_of(instance, first)
        assert run is not None
        wait_until(
            lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE,
            120,
            "the dead run failing in Dagster",
            interval=1,
        )
        _wait_for_task_run(center, first, "failed", timeout=30)
        assert time.monotonic() - killed_at < 180  # the limit for a dead worker
        task_run = center.get_run(first)
        assert "stopped heartbeating" in task_run["error_message"]
        assert {i["status"] for i in center.get_items(first)} <= {"completed", "failed"}

        # The dead run's slot is free again: the next request runs to the end.
        second = request_current_aggregation(pg_engine, Scope.INSTANCE, created_by=1)
        _wait_for_task_run(center, second, "completed", timeout=120)
        second_run = _dagster_run_of(instance, second)
        wait_until(
            lambda: instance.get_run_by_id(second_run.run_id).status == dg.DagsterRunStatus.SUCCESS,
            30,
            "the second run to succeed",
        )
        assert_run_center_consistent(pg_engine, instance, [first, second])


def test_a_run_behind_a_table_lock_says_so_and_a_cancel_frees_the_database(dagster_dev, pg_engine, pg_whalefall):
    load_synthetic_data(
        pg_engine,
        SyntheticSpec(
            instances=4, databases=2, days=3, end_date=china_today(), seed=6, inactive_share=0, deleted_share=0
        ),
    )
    first = request_current_aggregation(pg_engine, Scope.DATABASE, created_by=1)  # creates the month partition
    center = RunCenter(pg_engine)
    with dagster_dev.instance() as instance:  # the first run is over, in Dagster too, before the lock
        first_run = wait_until(lambda: _dagster_run_of(instance, first), 60, "the first run")
        wait_until(
            lambda: instance.get_run_by_id(first_run.run_id).status == dg.DagsterRunStatus.SUCCESS, 90, "a first run"
        )

    with pg_engine.connect() as holder:
        transaction = holder.begin()
        holder.exec_driver_sql("LOCK TABLE database_size_aggregations IN ACCESS EXCLUSIVE MODE")
        task_run_id = request_current_aggregation(pg_engine, Scope.DATABASE, created_by=1)
        with dagster_dev.instance() as instance:
            run = wait_until(lambda: _dagster_run_of(instance, task_run_id), 60, "the run")

            def reported() -> bool:
                messages = [entry.message for entry in instance.all_logs(run.run_id)]
                return any("Still working, waiting" in m and "database_size_aggregations" in m for m in messages)

            wait_until(reported, 60, "the lock wait in the run log", interval=0.5)
            assert settle(pg_engine, task_run_id, Cancelled(by=3)).ended_now  # the API's cancel
            cancelled_at = time.monotonic()
            wait_until(
                lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED,
                30,
                "the run to end CANCELED",
            )
            assert time.monotonic() - cancelled_at < 10
            waiting = holder.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'capacity_pipeline' "
                    "AND wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar()
            assert waiting == 0  # its statement was cancelled on the server, not left waiting
        transaction.rollback()
    assert center.status(task_run_id) == "cancelled"
    with dagster_dev.instance() as instance:
        assert_run_center_consistent(pg_engine, instance, [first, task_run_id])


def test_a_request_cancelled_while_its_run_is_starting_ends_canceled(dagster_dev, pg_engine):
    """The cancel lands after the queue let the run go and before its worker started (STARTING),
    and the reconciler's next tick comes at once."""
    load_synthetic_data(
        pg_engine,
        SyntheticSpec(
            instances=4, databases=2, days=3, end_date=china_today(), seed=8, inactive_share=0, deleted_share=0
        ),
    )
    task_run_id = request_current_aggregation(pg_engine, Scope.DATABASE, created_by=1)
    with dagster_dev.instance() as instance:

        def starting() -> dg.DagsterRun | None:
            run = _dagster_run_of(instance, task_run_id)
            assert run is None or run.status in BEFORE_START, run.status
            return run if run is not None and run.status == dg.DagsterRunStatus.STARTING else None

        run = wait_until(starting, 60, "the run starting", interval=0.02)
        assert whalefall_cancel(pg_engine, task_run_id)  # what WhaleFall's cancel endpoint does
        reconcile(instance, dagster_resources(pg_engine)["whalefall"])

        ended = wait_until(lambda: _finished(instance, run.run_id), 60, "the run ending", interval=0.2)
        log = [entry.message for entry in instance.all_logs(run.run_id) if entry.message]
        assert ended.status == dg.DagsterRunStatus.CANCELED, "\n".join(log)
        assert_run_center_consistent(pg_engine, instance, [task_run_id])


def test_a_cancel_then_a_killed_worker_leaves_the_task_run_cancelled_and_consistent(
    dagster_dev, pg_engine, pg_whalefall
):
    """WhaleFall's cancel (which leaves the counters as they were), then the worker killed before it
    could see it: the run center settles the TaskRun anyway, counters from the items."""
    client, run_id, center = _launch_slow_nightly(dagster_dev, pg_engine)
    with dagster_dev.instance() as instance:
        messages = [entry.message for entry in instance.all_logs(run_id)]
        [pid] = [int(m) for text_ in messages for m in re.findall(r"Started process for run \(pid: (\d+)\)", text_)]

        assert whalefall_cancel(pg_engine, run_id)  # what WhaleFall's cancel endpoint does
        os.kill(pid, signal.SIGKILL)

        assert wait_for_run(client, run_id, timeout=60) == dg.DagsterRunStatus.FAILURE

        def consistent() -> bool:
            run, items = center.get_run(run_id), center.get_items(run_id)
            done = sum(1 for i in items if i["status"] == "completed")
            return (run["progress_total"], run["progress_completed"], run["progress_failed"]) == (
                len(items),
                done,
                len(items) - done,
            )

        wait_until(consistent, 30, "the cancelled TaskRun's counters agreeing with its items", interval=0.5)
        assert_run_center_consistent(pg_engine, instance, [run_id], killed=[run_id])


def _finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.is_finished else None
