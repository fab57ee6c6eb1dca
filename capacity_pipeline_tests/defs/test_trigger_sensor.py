"""The trigger sensor, evaluated through build_sensor_context on a real Dagster instance."""

from __future__ import annotations

import uuid

import dagster as dg

from capacity_pipeline.defs.assets import asset_key
from capacity_pipeline.defs.sensors import capacity_current_trigger
from capacity_pipeline.domain.aggregation import Level
from capacity_pipeline.domain.periods import PeriodType, china_today
from capacity_pipeline.domain.runcenter import RunCenter
from capacity_pipeline.domain.taskrun_payloads import current_summary
from capacity_pipeline.domain.triggers import current_task_run_spec, request_current_aggregation
from capacity_pipeline_tests.defs.conftest import dagster_resources, resolve_job


def _evaluate(instance, engine, cursor=None):
    with dg.build_sensor_context(instance=instance, resources=dagster_resources(engine), cursor=cursor) as context:
        return capacity_current_trigger(context)


def _bad_trigger(engine, scope: str) -> str:
    """A pending TaskRun whose scope no API would have accepted (written by hand)."""
    run_id = str(uuid.uuid4())
    spec = current_task_run_spec("all", None)
    spec = type(spec)(**{**spec.__dict__, "summary_json": current_summary("capacity_aggregate_current", scope)})
    RunCenter(engine).create_run(run_id, spec, status="pending")
    return run_id


def test_each_trigger_becomes_one_run_request_and_a_bad_one_is_rejected(pg_engine, dagster_instance):
    first = request_current_aggregation(pg_engine, "all", created_by=3)
    bad = _bad_trigger(pg_engine, "everything")
    last = request_current_aggregation(pg_engine, " Database ", created_by=None)

    result = _evaluate(dagster_instance, pg_engine)

    today = china_today().isoformat()
    assert [(r.run_key, r.partition_key, r.asset_selection, r.tags) for r in result.run_requests] == [
        (
            f"capacity_aggregate_current:{first}",
            today,
            [asset_key(Level.DATABASE, PeriodType.DAILY), asset_key(Level.INSTANCE, PeriodType.DAILY)],
            {"capacity/task_run_id": first, "capacity/scope": "all", "capacity/created_by": "3"},
        ),
        (
            f"capacity_aggregate_current:{last}",
            today,
            [asset_key(Level.DATABASE, PeriodType.DAILY)],
            {"capacity/task_run_id": last, "capacity/scope": "database"},
        ),
    ]
    rejected = RunCenter(pg_engine).get_run(bad)
    assert rejected["status"] == "failed" and rejected["completed_at"] is not None
    assert rejected["error_message"] == (
        "trigger rejected: scope 参数仅支持 instance、database 或 all (got 'everything')"
    )


def test_a_launched_trigger_is_never_requested_again(pg_engine, pg_whalefall, dagster_instance):
    pg_whalefall.instance(1)
    run_id = request_current_aggregation(pg_engine, "instance", created_by=None)
    [request] = _evaluate(dagster_instance, pg_engine).run_requests
    repeat = _evaluate(dagster_instance, pg_engine).run_requests  # e.g. a second daemon, before launch
    assert [r.run_key for r in repeat] == [request.run_key]  # the same key: Dagster launches it once

    job = resolve_job(pg_engine, "capacity_aggregate_current")
    launched = job.execute_in_process(
        instance=dagster_instance,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        tags=request.tags,
    )
    assert launched.success
    assert RunCenter(pg_engine).get_run(run_id)["status"] == "running"  # the reconciler finalizes later

    for cursor in (None, "reset"):  # next tick, and a cursor reset
        evaluation = _evaluate(dagster_instance, pg_engine, cursor=cursor)
        assert isinstance(evaluation, dg.SkipReason) or not evaluation.run_requests


def test_cancelled_or_running_task_runs_are_not_triggers(pg_engine, dagster_instance):
    cancelled = request_current_aggregation(pg_engine, "all", created_by=None)
    assert RunCenter(pg_engine).cancel_run(cancelled)

    evaluation = _evaluate(dagster_instance, pg_engine)

    assert isinstance(evaluation, dg.SkipReason)
    assert RunCenter(pg_engine).get_run(cancelled)["status"] == "cancelled"


def test_the_request_writes_a_pending_task_run_as_the_api_does(engine):
    run_id = request_current_aggregation(engine, "database", created_by=5)

    run = RunCenter(engine).get_run(run_id)
    assert (run["status"], run["task_key"], run["task_name"], run["trigger_source"]) == (
        "pending",
        "capacity_aggregate_current",
        "容量统计(当前周期)",
        "manual",
    )
    assert (run["created_by"], run["result_url"], run["progress_total"]) == (5, "/capacity/databases", 0)
    assert run["summary_json"] == current_summary("capacity_aggregate_current", "database")
    assert run["summary_json"]["common"]["inputs"] == {"scope": "database"}
