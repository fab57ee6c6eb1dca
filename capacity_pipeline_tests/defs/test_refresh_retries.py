"""A failed automated re-aggregation is run again after its backoff, once per failed run, never
past the bound, and not at all once its partition was materialized since.

Every run here really runs (in process, on a real Dagster instance and PostgreSQL) and really
fails (a trigger on the roll-up table refuses its rows, as a database in trouble would); the
sensor is evaluated as the daemon would, with a clock the test moves instead of sleeping.
"""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
import pytest

from capacity_pipeline.defs.aggregation.assets import aggregation_selection, asset_key
from capacity_pipeline.defs.aggregation.automation import automation_run_tags
from capacity_pipeline.defs.aggregation.retries import build_retry_sensor, retry_run_key
from capacity_pipeline.defs.run_center.tags import REFRESH_ATTEMPT_TAG, RETRY_OF_TAG
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline_tests.support import (
    TEST_SETTINGS,
    assert_run_center_consistent,
    code_location_definitions,
    row_trigger,
)

DAY = date(2026, 3, 2)
KEY = DAY.isoformat()
DAILY = asset_key(Level.INSTANCE, PeriodType.DAILY)
BASE = 60


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def samples(pg_whalefall):  # noqa: ANN001, ANN201
    for instance_id in (1, 2):
        pg_whalefall.instance(instance_id)
        pg_whalefall.instance_stats(instance_id, [(DAY - timedelta(days=1), 100, 2), (DAY, 110 * instance_id, 2)])
    return pg_whalefall


def _run(definitions: dg.Definitions, instance: dg.DagsterInstance, tags: dict[str, str]) -> str:
    """One run of the daily instance-level partition, as the daemon launches it; its run id."""
    result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[DAILY], partition_key=KEY, tags=tags, raise_on_error=False
    )
    return result.run_id


def _launch(definitions: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest) -> str:
    assert (list(request.asset_selection), request.partition_key) == ([DAILY], KEY)
    return _run(definitions, instance, {**request.tags, "dagster/run_key": request.run_key})


def _ended(instance: dg.DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    assert record.dagster_run.status == dg.DagsterRunStatus.FAILURE
    return record.end_time


class Ticks:
    """The retry sensor evaluated as the daemon does, keeping its cursor between ticks."""

    def __init__(self, instance: dg.DagsterInstance, clock: Clock, **settings: int) -> None:
        self.sensor = build_retry_sensor(TEST_SETTINGS.with_changes(**settings), aggregation_selection(), clock=clock)
        self.instance, self.cursor, self.logged = instance, None, []

    def __call__(self) -> tuple[list[dg.RunRequest], str | None]:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor)
        result = self.sensor(context)
        if isinstance(result, dg.SensorResult):
            self.cursor = result.cursor
            return list(result.run_requests), None
        self.cursor = context.cursor
        return [], result.skip_message


def test_a_failed_automated_run_is_retried_after_its_backoff_doubling_up_to_the_bound(
    pg_engine, samples, dagster_instance
):
    definitions = code_location_definitions(pg_engine)
    clock = Clock()
    tick = Ticks(dagster_instance, clock, refresh_retries=2, refresh_retry_seconds=BASE)
    with row_trigger(pg_engine, "instance_size_aggregations", "NEW.instance_id = 2", error="disk quota exceeded"):
        failed = _run(definitions, dagster_instance, automation_run_tags())
        ended = _ended(dagster_instance, failed)

        clock.now = ended + BASE - 1  # not before its backoff
        requests, message = tick()
        assert requests == [] and f"run {failed}" in message and "retry 1 of 2 in 1 s" in message

        clock.now = ended + BASE
        [request], _ = tick()
        assert request.run_key == retry_run_key(failed)
        assert request.tags == {**automation_run_tags(), REFRESH_ATTEMPT_TAG: "1", RETRY_OF_TAG: failed}
        first_retry = _launch(definitions, dagster_instance, request)  # fails again: attempt 1
        retried_at = _ended(dagster_instance, first_retry)

        clock.now = retried_at + 2 * BASE - 1  # twice as long; the first run is not requested again
        requests, message = tick()
        assert requests == [] and f"run {first_retry}" in message and f"run {failed}" not in message
        assert "retry 2 of 2 in 1 s" in message

        clock.now = retried_at + 2 * BASE
        [request], _ = tick()
        assert request.tags[REFRESH_ATTEMPT_TAG] == "2" and request.tags[RETRY_OF_TAG] == first_retry
        second_retry = _launch(definitions, dagster_instance, request)

        clock.now = _ended(dagster_instance, second_retry) + 100 * BASE  # past the bound: given up, said once
        requests, message = tick()
        assert requests == [] and f"gave up: run {second_retry}" in message and "failed 3 time(s)" in message
        requests, message = tick()
        assert requests == [] and message == "1 failed run(s) given up on earlier"

    # Every attempt is a scheduled capacity_materialize TaskRun of its own, failed as its run.
    runs = [failed, first_retry, second_retry]
    center = RunCenter(pg_engine)
    assert [(center.get_run(r)["task_key"], center.get_run(r)["trigger_source"]) for r in runs] == [
        ("capacity_materialize", "scheduled")
    ] * 3
    assert_run_center_consistent(pg_engine, dagster_instance, runs)


def test_no_retry_once_materialized_since_nor_for_a_run_no_automation_made(pg_engine, samples, dagster_instance):
    definitions = code_location_definitions(pg_engine)
    clock = Clock()
    tick = Ticks(dagster_instance, clock, refresh_retries=3, refresh_retry_seconds=BASE)
    with row_trigger(pg_engine, "instance_size_aggregations", "NEW.instance_id = 2", error="disk quota exceeded"):
        failed = _run(definitions, dagster_instance, automation_run_tags())
        by_hand = _run(definitions, dagster_instance, {})  # a person's run: theirs to run again
    clock.now = _ended(dagster_instance, by_hand) + 100 * BASE
    [request], _ = tick()
    assert request.tags[RETRY_OF_TAG] == failed

    fixed = _run(definitions, dagster_instance, {})  # someone re-ran the partition meanwhile
    assert dagster_instance.get_run_by_id(fixed).status == dg.DagsterRunStatus.SUCCESS
    requests, message = tick()
    assert requests == [] and message == "no failed automated run to retry"


def test_with_no_retries_allowed_a_failed_run_is_given_up_at_once(pg_engine, samples, dagster_instance):
    definitions = code_location_definitions(pg_engine)
    clock = Clock()
    tick = Ticks(dagster_instance, clock, refresh_retries=0, refresh_retry_seconds=BASE)
    with row_trigger(pg_engine, "instance_size_aggregations", "NEW.instance_id = 2", error="disk quota exceeded"):
        failed = _run(definitions, dagster_instance, automation_run_tags())
    clock.now = _ended(dagster_instance, failed) + 100 * BASE
    requests, message = tick()
    assert requests == [] and message.startswith(f"gave up: run {failed}")
