"""The trigger launcher, evaluated through build_sensor_context on a real Dagster instance: each
trigger is launched once, equal requests share a run that has not started, a bad or stale trigger
fails alone and says why."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from sqlalchemy import update

from capacity_pipeline.defs.aggregation.assets import asset_key
from capacity_pipeline.defs.partitions import key_for_window
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.tags import CLAIM_TAG, TASK_RUN_TAG
from capacity_pipeline.defs.run_center.trigger_sensor import build_trigger_sensor
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import Level, Scope
from capacity_pipeline.domain.periods import PeriodType, china_today, current_window
from capacity_pipeline.domain.run_center.payloads import current_summary
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.run_center.triggers import current_task_run_spec, request_current_aggregation
from capacity_pipeline.domain.storage.tables import tables_for
from capacity_pipeline_tests.support import (
    PARTITIONS,
    assert_run_center_consistent,
    dagster_resources,
    resolve_job,
    whalefall_cancel,
)

capacity_current_trigger = build_trigger_sensor(PARTITIONS)


def _evaluate(instance, engine, cursor=None, **settings):  # noqa: ANN001, ANN202
    resources = dagster_resources(engine, **settings)
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        return capacity_current_trigger(context)


def _bad_trigger(engine, scope: str) -> str:  # noqa: ANN001
    """A trigger whose scope no API would have accepted (written by hand into task_runs)."""
    run_id = str(uuid.uuid4())
    spec = current_task_run_spec(Scope.ALL, None)
    spec = type(spec)(**{**spec.__dict__, "summary_json": current_summary(c.CURRENT_TASK_KEY, Scope.ALL)})
    spec.summary_json["common"]["inputs"]["scope"] = scope
    RunCenter(engine).create_run(run_id, spec)
    return run_id


def _request(engine, scope: Scope, created_by: int | None = None) -> str:  # noqa: ANN001
    return request_current_aggregation(engine, scope, created_by=created_by)


def test_the_trigger_row_is_written_as_whalefall_writes_it(engine):
    run_id = request_current_aggregation(engine, Scope.DATABASE, created_by=5)

    run = RunCenter(engine).get_run(run_id)
    # compat 6.1 start_run: `running` from the start, so WhaleFall's own cancel works at once
    assert (run["status"], run["task_key"], run["task_name"], run["trigger_source"]) == (
        "running",
        "capacity_aggregate_current",
        "容量统计(当前周期)",
        "manual",
    )
    assert (run["created_by"], run["result_url"], run["progress_total"]) == (5, "/capacity/databases", 0)
    assert run["summary_json"] == current_summary("capacity_aggregate_current", Scope.DATABASE)
    assert run["summary_json"]["common"]["inputs"] == {"scope": "database"}


def test_each_request_gets_one_run_request_and_a_bad_one_is_rejected(pg_engine, dagster_instance):
    first = _request(pg_engine, Scope.ALL, created_by=3)
    bad = _bad_trigger(pg_engine, "everything")
    last = _request(pg_engine, Scope.DATABASE)

    result = _evaluate(dagster_instance, pg_engine)

    today = china_today().isoformat()
    assert [(r.run_key, r.partition_key, r.asset_selection) for r in result.run_requests] == [
        (
            f"capacity_aggregate_current:{first}",
            today,
            [asset_key(Level.DATABASE, PeriodType.DAILY), asset_key(Level.INSTANCE, PeriodType.DAILY)],
        ),
        (f"capacity_aggregate_current:{last}", today, [asset_key(Level.DATABASE, PeriodType.DAILY)]),
    ]
    tags = result.run_requests[0].tags
    assert tags[CLAIM_TAG] == f"capacity_aggregate_current:{first}" and tags[TASK_RUN_TAG] == first
    assert (tags["capacity/scope"], tags["capacity/created_by"], tags["capacity/task_key"]) == (
        "all",
        "3",
        "capacity_aggregate_current",
    )
    rejected = RunCenter(pg_engine).get_run(bad)
    assert rejected["status"] == "failed" and rejected["completed_at"] is not None
    assert rejected["error_message"] == (
        "trigger rejected: scope 参数仅支持 instance、database 或 all (got 'everything')"
    )


def test_equal_requests_share_one_run_until_it_starts(pg_engine, pg_whalefall, dagster_instance):
    pg_whalefall.instance(1)
    burst = [_request(pg_engine, Scope.INSTANCE) for _ in range(5)]
    other = _request(pg_engine, Scope.DATABASE)

    requests = _evaluate(dagster_instance, pg_engine).run_requests

    assert [r.run_key for r in requests] == [
        f"capacity_aggregate_current:{burst[0]}",
        f"capacity_aggregate_current:{other}",
    ]
    # Until its run starts, the group takes every equal request; the repeated run key is what
    # Dagster de-duplicates, so nothing is launched twice.
    late = _request(pg_engine, Scope.INSTANCE)
    again = _evaluate(dagster_instance, pg_engine).run_requests
    assert [r.run_key for r in again] == [r.run_key for r in requests]

    [shared] = [r for r in requests if r.run_key.endswith(burst[0])]
    result = resolve_job(pg_engine, "capacity_aggregate_current").execute_in_process(
        instance=dagster_instance,
        partition_key=shared.partition_key,
        asset_selection=shared.asset_selection,
        tags=shared.tags,
    )

    assert result.success
    center = RunCenter(pg_engine)
    for task_run_id in [*burst, late]:  # one Dagster run, six TaskRuns, each final with its own items
        run = center.get_run(task_run_id)
        assert (run["status"], run["progress_total"], run["progress_completed"]) == ("completed", 1, 1)
        assert run["summary_json"]["ext"]["data"]["dagster_run_id"] == result.run_id
    assert_run_center_consistent(pg_engine, dagster_instance, [*burst, late])
    # Once the run has claimed its requests, a new equal one needs a run of its own.
    after = _request(pg_engine, Scope.INSTANCE)
    keys = [r.run_key for r in _evaluate(dagster_instance, pg_engine).run_requests]
    assert f"capacity_aggregate_current:{after}" in keys and shared.run_key not in keys


def test_a_shared_run_serves_the_requests_still_open_and_leaves_the_cancelled_one(
    pg_engine, pg_whalefall, dagster_instance
):
    pg_whalefall.instance(1)
    kept, cancelled = _request(pg_engine, Scope.ALL), _request(pg_engine, Scope.ALL)
    [request] = _evaluate(dagster_instance, pg_engine).run_requests
    center = RunCenter(pg_engine)
    assert whalefall_cancel(pg_engine, cancelled)

    result = resolve_job(pg_engine, "capacity_aggregate_current").execute_in_process(
        instance=dagster_instance, partition_key=request.partition_key, tags=request.tags
    )

    assert result.success
    assert center.get_run(kept)["status"] == "completed"
    assert center.get_run(cancelled)["status"] == "cancelled" and center.get_items(cancelled) == []
    assert_run_center_consistent(pg_engine, dagster_instance, [kept, cancelled])


def test_a_request_no_daemon_picked_up_in_time_fails_saying_so(pg_engine, dagster_instance):
    stale, fresh = _request(pg_engine, Scope.ALL), _request(pg_engine, Scope.ALL)
    runs = tables_for(pg_engine).tables["task_runs"]
    with pg_engine.begin() as connection:
        connection.execute(
            update(runs).where(runs.c.run_id == stale).values(started_at=datetime.now(UTC) - timedelta(minutes=6))
        )

    result = _evaluate(dagster_instance, pg_engine, trigger_pickup_timeout_seconds=300)

    assert [r.tags[TASK_RUN_TAG] for r in result.run_requests] == [fresh]
    run = RunCenter(pg_engine).get_run(stale)
    assert run["status"] == "failed"
    assert run["error_message"].startswith("no Dagster daemon picked up this request within 300 s")


def test_cancelled_requests_are_not_triggers(pg_engine, dagster_instance):
    cancelled = _request(pg_engine, Scope.ALL)
    assert whalefall_cancel(pg_engine, cancelled)

    evaluation = _evaluate(dagster_instance, pg_engine)

    assert isinstance(evaluation, dg.SkipReason)
    assert RunCenter(pg_engine).get_run(cancelled)["status"] == "cancelled"


def test_an_unreachable_whalefall_database_is_one_line_per_tick_and_the_tries_back_off(dagster_instance):
    resources = {"whalefall": WhaleFallDatabase(url="postgresql://nobody@127.0.0.1:1/none", connect_timeout_seconds=1)}
    with dg.build_sensor_context(instance=dagster_instance, resources=resources) as context:
        before = time.time()
        first = capacity_current_trigger(context)
        after = time.time()
        cursor = context.cursor

    assert isinstance(first, dg.SkipReason) and "\n" not in first.skip_message
    state = json.loads(cursor)
    assert state["error"].startswith("WHALEFALL_DATABASE_URL: cannot connect to the WhaleFall database")
    assert first.skip_message == f"{state['error']}; next try in 4 s"  # twice the 2 s interval after one failure
    assert state["failures"] == 1 and before + 4 <= state["retry_at"] <= after + 4

    with dg.build_sensor_context(instance=dagster_instance, resources=resources, cursor=cursor) as context:
        before = time.time()
        waiting = capacity_current_trigger(context)
        after = time.time()
        # No connection attempt while backing off: another failure would have moved the cursor on
        # (failures 2, next try in 8 s).
        assert context.cursor == cursor
    # The whole seconds left until the next try, as the sensor rounds them at the moment it looked.
    left = range(int(f"{state['retry_at'] - after:.0f}"), int(f"{state['retry_at'] - before:.0f}") + 1)
    assert isinstance(waiting, dg.SkipReason)
    assert waiting.skip_message in {f"{state['error']}; next try in {n} s" for n in left}, (waiting, left)


@pytest.mark.parametrize("scope", list(Scope))
def test_every_scope_selects_its_levels(pg_engine, dagster_instance, scope):
    _request(pg_engine, scope)
    [request] = _evaluate(dagster_instance, pg_engine).run_requests
    assert request.asset_selection == [asset_key(level, PeriodType.DAILY) for level in scope.levels]


def test_a_request_for_another_period_runs_that_periods_current_window(pg_engine, pg_whalefall, dagster_instance):
    pg_whalefall.instance(1)
    weekly = request_current_aggregation(pg_engine, Scope.ALL, created_by=1, period_type="weekly")
    unknown = request_current_aggregation(pg_engine, Scope.INSTANCE, created_by=1, period_type="hourly")

    requests = {r.tags[TASK_RUN_TAG]: r for r in _evaluate(dagster_instance, pg_engine).run_requests}

    this_week = key_for_window(current_window(PeriodType.WEEKLY, china_today()))
    assert (requests[weekly].partition_key, requests[weekly].asset_selection) == (
        this_week,
        [asset_key(Level.DATABASE, PeriodType.WEEKLY), asset_key(Level.INSTANCE, PeriodType.WEEKLY)],
    )
    # missing or unknown values stay daily, as WhaleFall does (compat 7.1)
    assert (requests[unknown].partition_key, requests[unknown].asset_selection) == (
        china_today().isoformat(),
        [asset_key(Level.INSTANCE, PeriodType.DAILY)],
    )
    center = RunCenter(pg_engine)
    for task_run_id, requested, effective in ((weekly, "weekly", "weekly"), (unknown, "hourly", "daily")):
        request = requests[task_run_id]
        result = resolve_job(pg_engine, "__ASSET_JOB").execute_in_process(
            instance=dagster_instance,
            partition_key=request.partition_key,
            asset_selection=request.asset_selection,
            tags=request.tags,
        )
        assert result.success
        data = center.get_run(task_run_id)["summary_json"]["ext"]["data"]
        assert (data["requested_period_type"], data["effective_period_type"], data["status"]) == (
            requested,
            effective,
            "skipped",  # the instance has no samples: 当前周期没有可处理的数据 (compat 6.2)
        )
        assert data["period_start"] == request.partition_key


def test_a_request_from_a_host_whose_clock_lags_is_launched_not_expired(pg_engine, dagster_instance, monkeypatch):
    """The API's host lags 400 s behind the daemon's (or the daemon's runs 400 s ahead): the
    pick-up timeout is measured on the database's clock, so neither host's clock matters."""
    from capacity_pipeline.domain.storage import clock

    real = clock.host_time
    monkeypatch.setattr(clock, "host_time", lambda: real() - timedelta(seconds=400))
    from_a_lagging_host = _request(pg_engine, Scope.ALL)
    monkeypatch.setattr(clock, "host_time", real)
    seen_by_a_host_ahead = _request(pg_engine, Scope.DATABASE)
    monkeypatch.setattr(clock, "host_time", lambda: real() + timedelta(seconds=400))

    result = _evaluate(dagster_instance, pg_engine, trigger_pickup_timeout_seconds=300)

    launched = sorted(r.tags[TASK_RUN_TAG] for r in result.run_requests)
    assert launched == sorted([from_a_lagging_host, seen_by_a_host_ahead])
    statuses = RunCenter(pg_engine).statuses([from_a_lagging_host, seen_by_a_host_ahead])
    assert set(statuses.values()) == {"running"}
