"""End to end under a real `dagster dev` (daemon running, PostgreSQL storage): cancelling from
the run center, terminating from Dagster, and a run worker that dies."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import date

import pytest
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from capacity_pipeline.defs.jobs import NIGHTLY_JOB_NAME, NIGHTLY_OP_NAME
from capacity_pipeline.domain.runcenter import RunCenter
from capacity_pipeline.domain.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline_tests.e2e.conftest import wait_until
from capacity_pipeline_tests.e2e.test_dagster_dev import _submit, _wait_for_run

TODAY = date(2026, 7, 2)
SLOW = pytest.mark.dagster_env(CAPACITY_BATCH_SIZE="1", CAPACITY_BATCH_PAUSE_SECONDS="1")


def _launch_slow_nightly(dagster_dev, pg_engine) -> tuple[DagsterGraphQLClient, str, RunCenter]:
    load_synthetic_data(
        pg_engine,
        SyntheticSpec(instances=12, databases=2, days=40, end_date=TODAY, seed=9, inactive_share=0, deleted_share=0),
    )
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev.port)
    run_id = _submit(
        client,
        time.monotonic() + 60,
        job_name=NIGHTLY_JOB_NAME,
        repository_location_name="capacity_pipeline",
        run_config={"ops": {NIGHTLY_OP_NAME: {"config": {"today": TODAY.isoformat()}}}},
    )
    center = RunCenter(pg_engine)

    def progressing() -> bool:
        run = center.get_run(run_id)
        return run is not None and run["progress_completed"] >= 2

    wait_until(progressing, 90, f"progress of run {run_id} (log: {dagster_dev.log})")
    return client, run_id, center


def _wait_for_task_run(center: RunCenter, run_id: str, status: str, timeout: float) -> None:
    wait_until(lambda: center.status(run_id) == status, timeout, f"TaskRun {run_id} becoming {status}")


def _assert_cancelled_with_batches_intact(center: RunCenter, run_id: str, whalefall) -> None:
    run, items = center.get_run(run_id), center.get_items(run_id)
    completed = [i for i in items if i["status"] == "completed"]
    assert run["status"] == "cancelled" and run["completed_at"] is not None
    assert completed and len(completed) < len(items)
    assert all(i["status"] in ("completed", "cancelled") for i in items)
    assert (run["progress_completed"], run["progress_failed"]) == (len(completed), len(items) - len(completed))
    daily = {r["instance_id"] for r in whalefall.rows("instance_size_aggregations") if r["period_type"] == "daily"}
    assert {i["instance_id"] for i in completed} <= daily  # the committed batches stay committed


@SLOW
def test_cancel_in_the_run_center_ends_the_dagster_run_canceled(dagster_dev, pg_engine, pg_whalefall):
    client, run_id, center = _launch_slow_nightly(dagster_dev, pg_engine)

    assert center.cancel_run(run_id)  # what WhaleFall's cancel endpoint does
    cancelled_at = time.monotonic()
    status = _wait_for_run(client, run_id, timeout=30)

    assert status == DagsterRunStatus.CANCELED, dagster_dev.log.read_text()[-3000:]
    assert time.monotonic() - cancelled_at < 10
    _assert_cancelled_with_batches_intact(center, run_id, pg_whalefall)


@SLOW
def test_terminating_in_dagster_cancels_the_task_run(dagster_dev, pg_engine, pg_whalefall):
    client, run_id, center = _launch_slow_nightly(dagster_dev, pg_engine)

    client.terminate_run(run_id)
    terminated_at = time.monotonic()

    assert _wait_for_run(client, run_id, timeout=30) == DagsterRunStatus.CANCELED
    _wait_for_task_run(center, run_id, "cancelled", timeout=10 - (time.monotonic() - terminated_at))
    _assert_cancelled_with_batches_intact(center, run_id, pg_whalefall)


@SLOW
def test_a_killed_run_worker_fails_the_task_run_within_a_minute(dagster_dev, pg_engine, pg_whalefall):
    client, run_id, center = _launch_slow_nightly(dagster_dev, pg_engine)
    with dagster_dev.instance() as instance:
        messages = [entry.message for entry in instance.all_logs(run_id)]
    [pid] = [int(m) for text in messages for m in re.findall(r"Started process for run \(pid: (\d+)\)", text)]

    os.kill(pid, signal.SIGKILL)

    assert _wait_for_run(client, run_id, timeout=60) == DagsterRunStatus.FAILURE
    _wait_for_task_run(center, run_id, "failed", timeout=60)
    run, items = center.get_run(run_id), center.get_items(run_id)
    assert run_id in run["error_message"] and "process" in run["error_message"].lower()
    assert {i["status"] for i in items} <= {"completed", "failed"}
    assert [i["error_message"] for i in items if i["status"] == "failed"] == [run["error_message"]] * sum(
        1 for i in items if i["status"] == "failed"
    )
