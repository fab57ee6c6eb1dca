"""Every aggregation run shows in WhaleFall's run center (compat 6), whichever way it was launched,
and is final there as soon as its work ends: the steps' hooks settle it, with no daemon running.

Real Dagster runs on a real instance, against PostgreSQL. The reconciler (`reconcile`, what the
`run_center_reconciler` sensor runs) is only exercised for what hooks cannot see.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from sqlalchemy import select, text, update

from capacity_pipeline.defs.aggregation.assets import asset_key
from capacity_pipeline.defs.aggregation.jobs import calculate_database_schedule
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.reconciler import reconcile, run_center_reconciler
from capacity_pipeline.defs.run_center.tags import CLAIM_TAG, CREATED_BY_TAG, SCOPE_TAG, TASK_RUN_IDS_TAG, TASK_RUN_TAG
from capacity_pipeline.domain.model import Level, Scope, TaskStatus
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.domain.run_center.claims import RunClaims, WorkerStats
from capacity_pipeline.domain.run_center.payloads import PhaseResult
from capacity_pipeline.domain.run_center.settle import Cancelled, Failed, Settlement, Succeeded, WorkerLost, settle
from capacity_pipeline.domain.run_center.task_runs import ItemPhase, RunCenter
from capacity_pipeline.domain.run_center.triggers import request_current_aggregation
from capacity_pipeline.domain.storage.tables import tables_for
from capacity_pipeline_tests.support import (
    AGGREGATION_ASSETS,
    assert_run_center_consistent,
    dagster_resources,
    resolve_job,
    row_trigger,
    wait_until,
    whalefall_cancel,
)

DAY = date(2026, 7, 1)
PREVIOUS = date(2026, 6, 30)
KEY = DAY.isoformat()
DATABASE_AND_INSTANCE = ["database", "instance"]
SCOPE_METRICS = [
    {"key": "scope", "label": "范围", "value": "all", "unit": None, "tone": "info"},
    {"key": "requested_period_type", "label": "请求周期", "value": "daily", "unit": None, "tone": "info"},
    {"key": "effective_period_type", "label": "生效周期", "value": "daily", "unit": None, "tone": "info"},
]
WHALEFALL_ITEM_KEYS = {
    "status",
    "processed_records",
    "message",
    "errors",
    "period_type",
    "period_start",
    "period_end",
    "instance_id",
    "instance_name",
}


@pytest.fixture
def four_instances(pg_whalefall):
    """zeta (id 1, two databases), alpha (id 2, one), an inactive one (3), delta (4, no stats)."""
    w = pg_whalefall
    w.instance(1, "zeta")
    w.instance(2, "alpha")
    w.instance(3, "gone", active=False)
    w.instance(4, "delta")
    for instance_id, databases in ((1, ["app", "log"]), (2, ["crm"]), (3, ["old"])):
        for database in databases:
            w.database_stats(instance_id, database, [(DAY, 120, 100), (PREVIOUS, 100, 90)])
        w.instance_stats(instance_id, [(DAY, 120 * len(databases), len(databases)), (PREVIOUS, 100, 1)])
    return w


def _without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in {"id", "started_at", "completed_at", "created_at", "updated_at"}}


def _item_view(item: dict) -> tuple:
    return (item["item_type"], item["item_key"], item["item_name"], item["instance_id"], item["status"])


def _current(engine, instance, **kwargs):  # noqa: ANN001, ANN202
    return resolve_job(engine, "capacity_aggregate_current").execute_in_process(
        partition_key=KEY, instance=instance, **kwargs
    )


def test_current_job_writes_spec_6_2_rows_final_when_the_run_returns(pg_engine, four_instances, dagster_instance):
    result = _current(pg_engine, dagster_instance)

    assert result.success
    center = RunCenter(pg_engine)
    run = center.get_run(result.run_id)  # final already: the hooks settled it, no daemon involved
    assert _without_times(run) == {
        "run_id": result.run_id,
        "task_key": "capacity_aggregate_current",
        "task_name": "容量统计(当前周期)",
        "task_category": "aggregation",
        "trigger_source": "manual",
        "status": "completed",
        "created_by": None,
        "progress_total": 3,
        "progress_completed": 3,
        "progress_failed": 0,
        "result_url": "/capacity/instances",
        "error_message": None,
        "summary_json": {
            "version": 1,
            "common": {
                "inputs": {"scope": "all"},
                "scope": {"time": None, "target": {}},
                "metrics": SCOPE_METRICS,
                "highlights": [],
                "flags": {"skipped": False, "skip_reason": None},
            },
            "ext": {
                "type": "capacity_aggregate_current",
                "version": 1,
                "data": {
                    "scope": "all",
                    "requested_period_type": "daily",
                    "effective_period_type": "daily",
                    "period_start": KEY,
                    "period_end": KEY,
                    "status": "completed",
                    "message": "当前周期聚合完成",
                    "dagster_run_id": result.run_id,
                    "dagster_run_url": f"http://127.0.0.1:3000/runs/{result.run_id}",
                },
            },
        },
    }
    assert run["started_at"] <= run["completed_at"]
    items = center.get_items(result.run_id)
    assert [_item_view(i) for i in items] == [
        ("instance", "1", "zeta", 1, "completed"),
        ("instance", "2", "alpha", 2, "completed"),
        ("instance", "4", "delta", 4, "completed"),  # no data is a completed item (compat Q9)
    ]
    zeta, _, delta = items
    # With scope all the instance phase writes last, so its metrics are the final ones (compat 6.2).
    assert zeta["metrics_json"] == {
        "processed_records": 1,
        "runner": "instance",
        "scope": "all",
        "period_type": "daily",
    }
    details = dict(zeta["details_json"])
    phases = details.pop("phases")
    assert details == {
        "status": "completed",
        "processed_records": 1,
        "message": "实例 zeta 的 daily 实例聚合完成 (处理 1 条记录)",
        "errors": [],
        "period_type": "daily",
        "period_start": KEY,
        "period_end": KEY,
        "instance_id": 1,
        "instance_name": "zeta",
    }
    # Spec Q10: both phases beside WhaleFall's final payload.
    assert phases["instance"]["details_json"] == details
    assert phases["database"]["details_json"]["message"] == "实例 zeta 的 daily 数据库聚合完成 (处理 2 个数据库)"
    assert phases["database"]["metrics_json"]["runner"] == "database"
    assert delta["details_json"]["status"] == "skipped"
    assert delta["details_json"]["message"] == f"实例 delta 在 {KEY} 至 {KEY} 没有实例统计数据,跳过聚合"
    assert all(i["started_at"] and i["completed_at"] and i["error_message"] is None for i in items)
    assert_run_center_consistent(pg_engine, dagster_instance, [result.run_id])


def test_database_scope_and_a_task_run_named_by_tag_are_adopted(pg_engine, four_instances, dagster_instance):
    center = RunCenter(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.DATABASE, created_by=7)  # what the API writes

    result = _current(
        pg_engine,
        dagster_instance,
        asset_selection=[asset_key(Level.DATABASE, PeriodType.DAILY)],
        tags={TASK_RUN_TAG: task_run_id, SCOPE_TAG: "database", CREATED_BY_TAG: "7"},
    )

    assert result.success
    assert center.get_run(result.run_id) is None  # adopted, not duplicated
    run = center.get_run(task_run_id)
    assert (run["status"], run["created_by"], run["result_url"]) == ("completed", 7, "/capacity/databases")
    assert run["summary_json"]["ext"]["data"]["scope"] == "database"
    zeta = center.get_items(task_run_id)[0]
    assert zeta["metrics_json"] == {
        "processed_records": 2,
        "runner": "database",
        "scope": "database",
        "period_type": "daily",
    }
    # One phase only: the item is exactly WhaleFall's, with nothing added.
    assert set(zeta["details_json"]) == WHALEFALL_ITEM_KEYS
    assert zeta["details_json"]["message"] == "实例 zeta 的 daily 数据库聚合完成 (处理 2 个数据库)"
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id])


def _nightly_request(tick: datetime) -> dg.RunRequest:
    return calculate_database_schedule(dg.build_schedule_context(scheduled_execution_time=tick))


def test_scheduled_nightly_run_writes_spec_6_3_rows(pg_engine, four_instances, dagster_instance):
    request = _nightly_request(datetime(2026, 7, 2, 4, 0, tzinfo=ZoneInfo("Asia/Shanghai")))
    result = resolve_job(pg_engine, "calculate_database").execute_in_process(
        run_config=request.run_config,
        tags={**request.tags, "dagster/schedule_name": "calculate_database_nightly"},
        instance=dagster_instance,
    )
    assert result.success
    center = RunCenter(pg_engine)
    run = center.get_run(result.run_id)

    assert (run["task_key"], run["task_name"], run["task_category"]) == (
        "calculate_database",
        "统计数据库聚合",
        "aggregation",
    )
    assert (run["trigger_source"], run["created_by"], run["status"]) == ("scheduled", None, "completed")
    assert (run["result_url"], run["error_message"]) == ("/capacity/instances", None)
    assert (run["progress_total"], run["progress_completed"], run["progress_failed"]) == (3, 3, 0)
    items = center.get_items(result.run_id)
    assert [i["item_name"] for i in items] == ["alpha", "delta", "zeta"]  # name order (compat 6.3)
    alpha, delta, zeta = items
    # Samples on 06-30 and 07-01: the last day, month and quarter have data, the last week does not.
    assert alpha["metrics_json"] == {"aggregated_count": 3}
    assert delta["metrics_json"] == {"aggregated_count": 0}
    details = alpha["details_json"]
    assert set(details) == {
        "aggregations_created",
        "aggregation_count",
        "periods",
        "errors",
        "instance_id",
        "instance_name",
    }
    assert (details["aggregations_created"], details["errors"], details["instance_id"]) == (3, [], 2)
    assert details["periods"]["daily"] == {
        "status": "completed",
        "instance_id": 2,
        "instance_name": "alpha",
        "period_type": "daily",
        "processed_records": 1,
        "message": "实例 alpha 的 daily 聚合已更新",
        "period_start": "2026-07-01",
        "period_end": "2026-07-01",
        "period_date": "2026-07-01",
    }
    assert details["periods"]["weekly"] == {
        "status": "skipped",
        "instance_id": 2,
        "instance_name": "alpha",
        "period_type": "weekly",
        "processed_records": 0,
        "message": "实例 alpha 在 2026-06-22 到 2026-06-28 没有统计数据,跳过聚合",
        "period_start": "2026-06-22",
        "period_end": "2026-06-28",
    }
    summary = run["summary_json"]
    assert summary["common"]["inputs"] == {"requested_periods": None}
    assert summary["common"]["metrics"] == [
        {"key": "instances_total", "label": "实例总数", "value": 3, "unit": "个", "tone": "info"},
        {"key": "instances_successful", "label": "成功实例", "value": 3, "unit": "个", "tone": "success"},
        {"key": "instances_failed", "label": "失败实例", "value": 0, "unit": "个", "tone": "danger"},
        {"key": "records_total", "label": "聚合记录总数", "value": 15, "unit": "条", "tone": "info"},
    ]
    data = summary["ext"]["data"]
    assert (summary["ext"]["type"], data["periods_executed"]) == (
        "calculate_database",
        ["daily", "weekly", "monthly", "quarterly"],
    )
    assert data["instances"] == {"total": 3, "successful": 3, "failed": 0}
    # instance: zeta and alpha, 3 periods each; database: their 3 databases in those 3 periods
    assert data["records"] == {"instance": 6, "database": 9, "total": 15}
    assert data["session_id"] is None and data["dagster_run_id"] == result.run_id
    assert_run_center_consistent(pg_engine, dagster_instance, [result.run_id])


def test_nightly_run_launched_by_hand_is_manual(pg_engine, four_instances, dagster_instance):
    result = resolve_job(pg_engine, "calculate_database").execute_in_process(
        run_config={"ops": {"aggregate_last_periods": {"config": {"today": "2026-07-02"}}}},
        tags={CREATED_BY_TAG: "12"},
        instance=dagster_instance,
    )
    run = RunCenter(pg_engine).get_run(result.run_id)
    assert (run["trigger_source"], run["created_by"], run["status"]) == ("manual", 12, "completed")
    assert_run_center_consistent(pg_engine, dagster_instance, [result.run_id])


def test_hand_made_materialization_and_backfill_get_a_task_run(pg_engine, four_instances, dagster_instance):
    center = RunCenter(pg_engine)
    weekly = [AGGREGATION_ASSETS[level, PeriodType.WEEKLY] for level in Level]
    materialized = dg.materialize(
        weekly, partition_key="2026-06-29", resources=dagster_resources(pg_engine), instance=dagster_instance
    )
    backfill = resolve_job(pg_engine, "__ASSET_JOB").execute_in_process(
        instance=dagster_instance,
        asset_selection=[asset_key(Level.INSTANCE, PeriodType.DAILY)],
        tags={"dagster/asset_partition_range_start": "2026-06-29", "dagster/asset_partition_range_end": KEY},
    )
    assert materialized.success and backfill.success

    for result, scope, start, end in (
        (materialized, "all", "2026-06-29", "2026-07-05"),
        (backfill, "instance", "2026-06-29", KEY),
    ):
        run = center.get_run(result.run_id)
        assert (run["task_key"], run["task_name"]) == ("capacity_materialize", "容量统计(Dagster 物化)")
        assert (run["task_category"], run["trigger_source"], run["status"]) == ("aggregation", "manual", "completed")
        data = run["summary_json"]["ext"]["data"]
        assert (data["scope"], data["period_start"], data["period_end"], data["status"]) == (
            scope,
            start,
            end,
            "completed",
        )
        assert [i["status"] for i in center.get_items(result.run_id)] == ["completed"] * 3
    assert center.get_run(materialized.run_id)["summary_json"]["ext"]["data"]["effective_period_type"] == "weekly"
    # The backfill ran three days in one step: one result per instance over the range.
    zeta = center.get_items(backfill.run_id)[0]
    assert (zeta["details_json"]["period_start"], zeta["details_json"]["period_end"]) == ("2026-06-29", KEY)
    assert_run_center_consistent(pg_engine, dagster_instance, [materialized.run_id, backfill.run_id])


def test_progress_moves_per_batch_and_never_completes_an_item_before_its_last_phase(
    pg_engine, four_instances, dagster_instance
):
    center = RunCenter(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.ALL, created_by=None)
    job = resolve_job(pg_engine, "capacity_aggregate_current", batch_size=1, batch_pause_seconds=0.4)
    runner = threading.Thread(
        target=job.execute_in_process,
        kwargs={"partition_key": KEY, "instance": dagster_instance, "tags": {TASK_RUN_TAG: task_run_id}},
    )
    runner.start()
    seen = []
    deadline = time.monotonic() + 60
    while runner.is_alive() and time.monotonic() < deadline:
        # Each read is its own connection while batches commit: a sample is kept only when the run
        # row did not change around the items read (every write of the run sets updated_at, and an
        # item becomes final in the same transaction as the run's counters).
        run, items, again = center.get_run(task_run_id), center.get_items(task_run_id), center.get_run(task_run_id)
        if run == again:
            seen.append((run["status"], run["progress_completed"], run["progress_total"], items))
        time.sleep(0.05)
    runner.join()

    for _status, completed, _total, items in seen:
        final = [i for i in items if i["status"] in ("completed", "failed")]
        assert completed == len(final)  # the counters are the items'
        for item in final:  # an item is final only once both phases are in (fixes compat Q10's 100 %)
            assert set(item["details_json"]["phases"]) == {"database", "instance"}
    halfway = [
        s for s in seen if s[0] == "running" and s[2] == 3 and s[1] == 0 and all(i["details_json"] for i in s[3])
    ]
    assert halfway, "never saw the database phase done with the instance phase still to run"
    assert [s[1] for s in seen] == sorted(s[1] for s in seen)  # only ever moves forward
    assert center.get_run(task_run_id)["progress_completed"] == 3
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id])


def test_status_only_moves_forward_whatever_order_events_arrive(pg_engine, four_instances, dagster_instance):
    center = RunCenter(pg_engine)
    finished = _current(pg_engine, dagster_instance)
    before = center.get_run(finished.run_id)
    assert before["status"] == "completed"

    assert not whalefall_cancel(pg_engine, finished.run_id)
    for late in (Cancelled(by=3), Failed("late failure"), WorkerLost("late"), Succeeded()):
        assert settle(pg_engine, finished.run_id, late) == Settlement(finished.run_id, TaskStatus.COMPLETED)
    reconcile(dagster_instance, dagster_resources(pg_engine)["whalefall"])

    assert center.get_run(finished.run_id) == before


def test_one_failing_instance_fails_its_item_and_the_run(pg_engine, four_instances, dagster_instance):
    with row_trigger(pg_engine, "instance_size_aggregations", "NEW.instance_id = 2", error="disk quota exceeded"):
        result = _current(pg_engine, dagster_instance, raise_on_error=False)
    assert not result.success
    center = RunCenter(pg_engine)

    run = center.get_run(result.run_id)
    assert (run["status"], run["error_message"]) == ("failed", None)  # compat 6.2: finalize, not mark-failed
    assert run["summary_json"]["ext"]["data"]["status"] == "failed"
    assert run["summary_json"]["ext"]["data"]["message"] == "当前周期聚合完成,但存在失败的子任务"
    zeta, alpha, delta = center.get_items(result.run_id)
    assert (zeta["status"], delta["status"], alpha["status"]) == ("completed", "completed", "failed")
    assert alpha["error_message"] == "实例 alpha 的 daily 聚合失败"
    assert "disk quota exceeded" in alpha["details_json"]["error"]
    assert alpha["details_json"]["errors"] == [alpha["details_json"]["error"]]
    assert alpha["metrics_json"]["runner"] == "database"  # its database phase completed (compat 6.1 fail_item)
    assert (run["progress_completed"], run["progress_failed"]) == (2, 1)
    assert_run_center_consistent(pg_engine, dagster_instance, [result.run_id])


def test_a_failure_outside_the_per_instance_isolation_fails_the_run_and_open_items(
    pg_engine, four_instances, dagster_instance
):
    completing_alpha = "NEW.item_key = '2' AND NEW.status = 'completed'"
    with row_trigger(
        pg_engine, "task_run_items", completing_alpha, event="UPDATE", error="run center storage unavailable"
    ):
        result = resolve_job(pg_engine, "capacity_aggregate_current", batch_size=1).execute_in_process(
            partition_key=KEY,
            instance=dagster_instance,
            asset_selection=[asset_key(Level.INSTANCE, PeriodType.DAILY)],
            raise_on_error=False,
        )
    assert not result.success
    center = RunCenter(pg_engine)

    run = center.get_run(result.run_id)
    assert run["status"] == "failed" and "run center storage unavailable" in run["error_message"]
    zeta, alpha, delta = center.get_items(result.run_id)
    assert zeta["status"] == "completed"
    assert (alpha["status"], delta["status"]) == ("failed", "failed")
    assert alpha["error_message"] == delta["error_message"] == run["error_message"]
    assert (run["progress_total"], run["progress_completed"], run["progress_failed"]) == (3, 1, 2)
    # The batches committed before the error stay committed.
    assert {r["instance_id"] for r in four_instances.rows("instance_size_aggregations")} >= {1, 2}
    assert_run_center_consistent(pg_engine, dagster_instance, [result.run_id])


def test_a_task_run_cancelled_before_its_run_starts_never_runs_and_ends_canceled(
    pg_engine, four_instances, dagster_instance
):
    center = RunCenter(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.ALL, created_by=None)
    assert whalefall_cancel(pg_engine, task_run_id)  # what WhaleFall's cancel endpoint does

    result = _current(pg_engine, dagster_instance, tags={TASK_RUN_TAG: task_run_id}, raise_on_error=False)

    assert dagster_instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.CANCELED
    assert center.get_run(task_run_id)["status"] == "cancelled"
    assert center.get_items(task_run_id) == []
    assert (
        four_instances.rows("database_size_aggregations") == []
        and four_instances.rows("instance_size_aggregations") == []
    )
    messages = [entry.message for entry in dagster_instance.all_logs(result.run_id)]
    assert any("cancelled in the run center" in message for message in messages)
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id])


def test_cancel_from_the_run_center_stops_between_batches_and_ends_canceled(
    pg_engine, four_instances, dagster_instance
):
    center = RunCenter(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.INSTANCE, created_by=None)
    job = resolve_job(pg_engine, "capacity_aggregate_current", batch_size=1, batch_pause_seconds=0.8)
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=job.execute_in_process(
                partition_key=KEY,
                instance=dagster_instance,
                asset_selection=[asset_key(Level.INSTANCE, PeriodType.DAILY)],
                tags={TASK_RUN_TAG: task_run_id},
                raise_on_error=False,
            )
        )
    )
    runner.start()
    wait_until(
        lambda: center.get_run(task_run_id)["progress_completed"] >= 1, 30, "the first batch completing", interval=0.05
    )
    assert settle(pg_engine, task_run_id, Cancelled(by=9)).ended_now  # the API's cancel, by user 9
    runner.join(timeout=60)

    assert dagster_instance.get_run_by_id(outcome["result"].run_id).status == dg.DagsterRunStatus.CANCELED
    run = center.get_run(task_run_id)
    items = center.get_items(task_run_id)
    assert run["status"] == "cancelled" and run["completed_at"] is not None
    completed = [i for i in items if i["status"] == "completed"]
    assert completed and all(i["status"] in ("completed", "cancelled") for i in items)
    assert (run["progress_completed"], run["progress_failed"]) == (len(completed), len(items) - len(completed))
    written = {r["instance_id"] for r in four_instances.rows("instance_size_aggregations")}
    assert written == {i["instance_id"] for i in completed if i["details_json"]["status"] == "completed"}
    messages = [entry.message for entry in dagster_instance.all_logs(outcome["result"].run_id)]
    assert any("cancelled in the run center by user 9" in message for message in messages)
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id])


def test_a_re_execution_of_a_finished_api_run_gets_its_own_task_run(pg_engine, four_instances, dagster_instance):
    """A re-execution inherits the run's tags; it must not reopen the finished TaskRun."""
    center = RunCenter(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.ALL, created_by=None)
    first = _current(pg_engine, dagster_instance, tags={TASK_RUN_TAG: task_run_id})
    finished = center.get_run(task_run_id)
    assert finished["status"] == "completed"

    again = _current(pg_engine, dagster_instance, tags={TASK_RUN_TAG: task_run_id})

    assert first.success and again.success
    assert center.get_run(task_run_id) == finished
    assert center.get_run(again.run_id)["status"] == "completed"
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id, again.run_id])


# -- the reconciler: what hooks cannot see --------------------------------------------------------


def test_the_reconciler_settles_a_finished_run_whose_hook_could_not_write(pg_engine, four_instances, dagster_instance):
    completing = "NEW.status = 'completed' AND OLD.status = 'running'"
    with row_trigger(pg_engine, "task_runs", completing, event="UPDATE", error="run center unavailable"):
        result = _current(pg_engine, dagster_instance)
    assert result.success  # a hook that fails does not fail the run
    center = RunCenter(pg_engine)
    assert center.get_run(result.run_id)["status"] == "running"

    context = dg.build_sensor_context(instance=dagster_instance, resources=dagster_resources(pg_engine))
    evaluation = run_center_reconciler(context)

    assert f"{result.run_id}: completed" in evaluation.skip_message
    run = center.get_run(result.run_id)
    assert run["status"] == "completed" and run["summary_json"]["ext"]["data"]["status"] == "completed"
    assert_run_center_consistent(pg_engine, dagster_instance, [result.run_id])


def _started_run(
    instance: dg.DagsterInstance,
    engine,  # noqa: ANN001
    tags: dict | None = None,
    *,
    started_at: datetime | None = None,
) -> dg.DagsterRun:
    """A run Dagster believes STARTED (at `started_at`, default now), with no process behind it
    (its worker is gone)."""
    job = resolve_job(engine, "capacity_aggregate_current")
    run = instance.create_run_for_job(job_def=job, tags=tags or {}, status=dg.DagsterRunStatus.NOT_STARTED)
    instance.report_dagster_event(
        dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value, job_name=job.name),
        run.run_id,
        timestamp=started_at.timestamp() if started_at else None,
    )
    return instance.get_run_by_id(run.run_id)


def test_a_run_whose_worker_stopped_heartbeating_is_failed_in_dagster_and_the_run_center(
    pg_engine, four_instances, dagster_instance
):
    center, claims = RunCenter(pg_engine), RunClaims(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.ALL, created_by=None)
    silent_since = datetime.now(UTC) - timedelta(seconds=30)
    run = _started_run(dagster_instance, pg_engine, started_at=silent_since)
    assert claims.adopt(task_run_id, run.run_id)
    center.snapshot_items(task_run_id)
    links = tables_for(pg_engine).tables["capacity_task_run_links"]
    with pg_engine.begin() as connection:
        connection.execute(update(links).values(heartbeat_at=silent_since))
    whalefall = dagster_resources(pg_engine, heartbeat_timeout_seconds=60)["whalefall"]

    assert reconcile(dagster_instance, whalefall) == []  # 30 s of silence is within the limit

    whalefall = dagster_resources(pg_engine, heartbeat_timeout_seconds=10)["whalefall"]
    assert reconcile(dagster_instance, whalefall) == [f"{run.run_id}: worker dead, run failed"]

    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    task_run = center.get_run(task_run_id)
    assert task_run["status"] == "failed" and "stopped heartbeating" in task_run["error_message"]
    assert {i["status"] for i in center.get_items(task_run_id)} == {"failed"}
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id])


def test_a_run_between_two_steps_is_alive_while_it_writes_events(pg_engine, four_instances, dagster_instance):
    """The heartbeat beats inside a step only: a run whose last step ended longer ago than the
    timeout, but which still writes events (its next step starting on a busy machine, or its
    end), is not failed; once it is silent in both, it is."""
    task_run_id = request_current_aggregation(pg_engine, Scope.ALL, created_by=None)
    silent_since = datetime.now(UTC) - timedelta(seconds=30)
    run = _started_run(dagster_instance, pg_engine, started_at=silent_since)
    assert RunClaims(pg_engine).adopt(task_run_id, run.run_id)
    links = tables_for(pg_engine).tables["capacity_task_run_links"]
    with pg_engine.begin() as connection:
        connection.execute(update(links).values(heartbeat_at=silent_since))
    dagster_instance.report_engine_event("the next step is starting", run)  # an event of now
    whalefall = dagster_resources(pg_engine, heartbeat_timeout_seconds=10)["whalefall"]

    assert reconcile(dagster_instance, whalefall) == []
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    assert RunCenter(pg_engine).status(task_run_id) == TaskStatus.RUNNING

    whalefall = dagster_resources(pg_engine, heartbeat_timeout_seconds=1)["whalefall"]
    wait_until(lambda: reconcile(dagster_instance, whalefall), 10, "the silent run failed", interval=0.5)
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id])


def _origin(job: dg.JobDefinition) -> RemoteJobOrigin:
    """Where a queued run would be launched from (Dagster requires one for a queued run)."""
    location = RegisteredCodeLocationOrigin("capacity_pipeline")
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job.name)


def test_a_queued_run_whose_task_runs_were_all_cancelled_is_cancelled_before_it_starts(pg_engine, four_instances):
    queued = {"run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}}
    with dg.instance_for_test(overrides=queued) as instance:
        claims = RunClaims(pg_engine)
        ids = [request_current_aggregation(pg_engine, Scope.ALL, created_by=None) for _ in range(2)]
        claim_key = f"capacity_aggregate_current:{ids[0]}"
        for task_run_id in ids:
            assert claims.link(task_run_id, claim_key, "all:daily:" + KEY)
        job = resolve_job(pg_engine, "capacity_aggregate_current")
        run = instance.create_run_for_job(
            job_def=job, tags={CLAIM_TAG: claim_key}, status=dg.DagsterRunStatus.QUEUED, remote_job_origin=_origin(job)
        )
        whalefall = dagster_resources(pg_engine)["whalefall"]

        whalefall_cancel(pg_engine, ids[0])
        assert reconcile(instance, whalefall) == []  # one of its requests still wants it
        whalefall_cancel(pg_engine, ids[1])
        assert reconcile(instance, whalefall) == [f"{claim_key}: queued Dagster run {run.run_id} cancelled"]

        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
        assert_run_center_consistent(pg_engine, instance, ids)


def test_the_reconciler_logs_one_line_when_whalefall_is_unreachable(dagster_instance):
    resources = {"whalefall": WhaleFallDatabase(url="postgresql://nobody@127.0.0.1:1/none", connect_timeout_seconds=1)}
    context = dg.build_sensor_context(instance=dagster_instance, resources=resources)

    evaluation = run_center_reconciler(context)

    assert isinstance(evaluation, dg.SkipReason)
    assert evaluation.skip_message.startswith("WHALEFALL_DATABASE_URL: cannot connect to the WhaleFall database")
    assert "\n" not in evaluation.skip_message and evaluation.skip_message.endswith("; next try in 10 s")


@pytest.mark.parametrize(
    ("memory_mib", "verdict"),
    [
        (300, "not short of memory: something killed it (an operator, a supervisor, a restart)"),
        (20_000, "it may have run the machine out of memory"),
    ],  # fmt: skip
)
def test_a_killed_worker_is_explained_by_its_last_heartbeat(
    pg_engine, four_instances, dagster_instance, memory_mib, verdict
):
    center, claims = RunCenter(pg_engine), RunClaims(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.ALL, created_by=None)
    run = _started_run(dagster_instance, pg_engine)
    claims.adopt(task_run_id, run.run_id)
    claims.beat(run.run_id, WorkerStats(pid=4242, memory_mib=memory_mib, machine_memory_mib=24_000))
    # What the code server reports when the worker dies, then the failure Dagster records.
    dagster_instance.report_engine_event(
        "[DagsterApiServer] Run execution process for x was terminated by signal 9 (SIGKILL). This usually "
        "indicates that the process was killed by the operating system due to running out of memory.",
        run,
    )
    dagster_instance.report_run_failed(run)

    reconcile(dagster_instance, dagster_resources(pg_engine)["whalefall"])

    message = center.get_run(task_run_id)["error_message"]
    assert message.startswith(f"Dagster run {run.run_id} failed: its worker process (pid 4242) was killed by signal 9")
    assert f"used {memory_mib} MiB of the machine's 24000 MiB" in message and message.endswith(verdict)
    assert f"Run center: {message}" in [entry.message for entry in dagster_instance.all_logs(run.run_id)]
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id])


def test_an_interrupt_nobody_asked_for_fails_the_task_run_as_dagster_fails_the_run(
    pg_engine, four_instances, dagster_instance
):
    """A worker interrupted without a termination request (its code server or machine stopping):
    Dagster ends the run FAILURE, so the run center says failed, not cancelled."""
    center = RunCenter(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.INSTANCE, created_by=None)

    def interrupt(_signum: int, _frame: object) -> None:
        raise dg.DagsterExecutionInterruptedError("interrupted")

    def interrupt_once_working() -> None:
        wait_until(lambda: (center.get_run(task_run_id) or {}).get("progress_completed", 0) >= 1, 30, "progress")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        threading.Thread(target=interrupt_once_working, daemon=True).start()
        result = resolve_job(
            pg_engine, "capacity_aggregate_current", batch_size=1, batch_pause_seconds=1
        ).execute_in_process(
            partition_key=KEY,
            instance=dagster_instance,
            asset_selection=[asset_key(Level.INSTANCE, PeriodType.DAILY)],
            tags={TASK_RUN_TAG: task_run_id},
            raise_on_error=False,
        )
    finally:
        signal.signal(signal.SIGUSR1, previous)

    assert dagster_instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.FAILURE
    run = center.get_run(task_run_id)
    assert run["status"] == "failed" and "interrupted without a termination request" in run["error_message"]
    assert {item["status"] for item in center.get_items(task_run_id)} <= {"completed", "failed"}
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id])


def test_a_cancel_between_the_steps_of_a_shared_run_leaves_the_cancelled_task_run_consistent(
    pg_engine, four_instances, dagster_instance
):
    """Two requests share a scope-all run; one is cancelled (as WhaleFall's cancel does it) after the
    database step and before the instance step: a barrier (the claim key's advisory lock, which each
    step takes first) holds the second step back until the cancel has landed."""
    center, claims = RunCenter(pg_engine), RunClaims(pg_engine)
    cancelled, kept = (request_current_aggregation(pg_engine, Scope.ALL, created_by=None) for _ in range(2))
    claim_key = f"capacity_aggregate_current:{cancelled}"
    for task_run_id in (cancelled, kept):
        assert claims.link(task_run_id, claim_key, f"all:daily:{KEY}")
    job = resolve_job(pg_engine, "capacity_aggregate_current", batch_size=1, batch_pause_seconds=0.3)
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=job.execute_in_process(
                partition_key=KEY, instance=dagster_instance, tags={CLAIM_TAG: claim_key}, raise_on_error=False
            )
        )
    )

    def instance_step_waiting() -> bool:
        """The database step and its hooks are over: the next step waits at the barrier."""
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )
        with pg_engine.connect() as connection:
            return connection.execute(query).scalar() > 0

    with pg_engine.connect() as holder:
        runner.start()
        wait_until(lambda: _claimed(pg_engine, cancelled), 30, "the database step claiming", interval=0.02)
        with holder.begin():
            holder.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"capacity_pipeline.claim.{claim_key}"}
            )
            wait_until(instance_step_waiting, 30, "the instance step waiting to claim", interval=0.05)
            assert whalefall_cancel(pg_engine, cancelled)  # what WhaleFall's cancel endpoint does
        runner.join(timeout=60)

    assert center.status(kept) == "completed"
    run, items = center.get_run(cancelled), center.get_items(cancelled)
    assert run["status"] == "cancelled" and {i["status"] for i in items} == {"cancelled"}
    assert (run["progress_total"], run["progress_completed"], run["progress_failed"]) == (3, 0, 3)
    assert_run_center_consistent(pg_engine, dagster_instance, [cancelled, kept])


def _claimed(engine, task_run_id: str) -> bool:  # noqa: ANN001
    links = tables_for(engine).tables["capacity_task_run_links"]
    query = select(links.c.claimed_at).where(links.c.task_run_id == task_run_id)
    with engine.connect() as connection:
        return connection.execute(query).scalar() is not None


def test_a_shared_run_names_every_task_run_it_serves(pg_engine, four_instances, dagster_instance):
    claims = RunClaims(pg_engine)
    ids = sorted(request_current_aggregation(pg_engine, Scope.DATABASE, created_by=None) for _ in range(3))
    claim_key = f"capacity_aggregate_current:{ids[0]}"
    for task_run_id in ids:
        assert claims.link(task_run_id, claim_key, f"database:daily:{KEY}")

    result = _current(
        pg_engine,
        dagster_instance,
        asset_selection=[asset_key(Level.DATABASE, PeriodType.DAILY)],
        tags={CLAIM_TAG: claim_key, TASK_RUN_TAG: ids[0]},
    )

    assert result.success
    tags = dagster_instance.get_run_by_id(result.run_id).tags
    assert tags[TASK_RUN_IDS_TAG] == " ".join(ids)
    assert_run_center_consistent(pg_engine, dagster_instance, ids)


def test_the_reconciler_makes_a_task_run_cancelled_before_its_worker_died_consistent(
    pg_engine, four_instances, dagster_instance
):
    """WhaleFall's cancel does not recompute the counters; the worker died before it could."""
    center, claims = RunCenter(pg_engine), RunClaims(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.INSTANCE, created_by=None)
    run = _started_run(dagster_instance, pg_engine)
    assert claims.adopt(task_run_id, run.run_id)
    center.snapshot_items(task_run_id)
    done = PhaseResult(TaskStatus.COMPLETED, {"processed_records": 1}, {"message": "done"})
    center.record_phases([task_run_id], [ItemPhase(1, "instance", done)], ["instance"])
    assert whalefall_cancel(pg_engine, task_run_id)  # what WhaleFall's cancel endpoint does
    dagster_instance.report_run_failed(run)  # its worker died before it saw the cancel

    reconcile(dagster_instance, dagster_resources(pg_engine)["whalefall"])

    task_run, items = center.get_run(task_run_id), center.get_items(task_run_id)
    assert task_run["status"] == "cancelled"
    assert [i["status"] for i in items] == ["completed", "cancelled", "cancelled"]
    assert (task_run["progress_total"], task_run["progress_completed"], task_run["progress_failed"]) == (3, 1, 2)
    assert_run_center_consistent(pg_engine, dagster_instance, [task_run_id], killed=[run.run_id])


def test_a_run_that_ended_with_items_still_open_does_not_complete_its_task_run(
    pg_engine, four_instances, dagster_instance
):
    """Dagster says SUCCESS, yet the TaskRun's instance phase never ran (its hooks never settled it):
    the reconciler must not call that completed."""
    center, claims = RunCenter(pg_engine), RunClaims(pg_engine)
    task_run_id = request_current_aggregation(pg_engine, Scope.ALL, created_by=None)
    run = _started_run(dagster_instance, pg_engine)
    assert claims.adopt(task_run_id, run.run_id)
    center.snapshot_items(task_run_id)
    database = PhaseResult(TaskStatus.COMPLETED, {"runner": "database"}, {"message": "db done"})
    center.record_phases([task_run_id], [ItemPhase(i, "database", database) for i in (1, 2, 4)], DATABASE_AND_INSTANCE)
    dagster_instance.report_dagster_event(
        dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name), run.run_id
    )

    reconcile(dagster_instance, dagster_resources(pg_engine)["whalefall"])

    task_run, items = center.get_run(task_run_id), center.get_items(task_run_id)
    assert task_run["status"] == "failed" and task_run["completed_at"] is not None
    assert {i["status"] for i in items} == {"failed"}
    assert "the instance phase never ran" in items[0]["error_message"]
    assert (task_run["progress_total"], task_run["progress_completed"], task_run["progress_failed"]) == (3, 0, 3)
    # Dagster says SUCCESS and the TaskRun failed: the one case the two must disagree (docs/run-center.md).
