"""The run center's rows (compat 6.1): status vocabulary, write rules, and forward-only status.

Every test runs on SQLite and PostgreSQL. Timestamps come back timezone-aware from PostgreSQL;
SQLite keeps the UTC wall clock without an offset, so `_utc` reads both as UTC.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import ActiveInstance, TaskStatus
from capacity_pipeline.domain.run_center.payloads import PhaseResult
from capacity_pipeline.domain.run_center.task_runs import ItemPhase, Progress, RunCenter, TaskRunSpec

RUN_ID = "11111111-1111-4111-8111-111111111111"
OTHER_RUN_ID = "22222222-2222-4222-8222-222222222222"
SUMMARY = {
    "version": 1,
    "common": {"inputs": {"scope": "all"}, "metrics": [], "flags": {"skipped": False, "skip_reason": None}},
    "ext": {"type": c.CURRENT_TASK_KEY, "version": 1, "data": {"scope": "all", "说明": "容量"}},
}
FINAL_SUMMARY = {"version": 1, "common": {"inputs": {}}, "ext": {"type": c.CURRENT_TASK_KEY, "data": {"n": 3}}}
METRICS = {"records": 2, "status": "completed"}
DETAILS = {"message": "实例 a 的 daily 实例聚合完成 (处理 2 条记录)"}


def _spec(**overrides: Any) -> TaskRunSpec:
    values: dict[str, Any] = {
        "task_key": "capacity_aggregate_current",
        "task_name": "容量统计(当前周期)",
        "trigger_source": "manual",
        "summary_json": SUMMARY,
    }
    return TaskRunSpec(**{**values, **overrides})


def _tick() -> None:
    """Let the clock move so that successive writes get distinct timestamps."""
    time.sleep(0.005)


def _utc(engine: Engine, value: datetime) -> datetime:
    """A stored timestamp as an aware UTC datetime; PostgreSQL's must carry an offset."""
    if engine.dialect.name == "postgresql":
        assert value.tzinfo is not None
        return value.astimezone(UTC)
    assert value.tzinfo is None  # SQLite: the UTC wall clock, no offset stored
    return value.replace(tzinfo=UTC)


def _between(engine: Engine, value: datetime | None, before: datetime, after: datetime) -> bool:
    return value is not None and before <= _utc(engine, value) <= after


def _completed(instance_id: int, metrics=METRICS, details=DETAILS, phase: str = "instance") -> ItemPhase:  # noqa: ANN001
    return ItemPhase(instance_id, phase, PhaseResult(TaskStatus.COMPLETED, metrics, details))


def _failed(instance_id: int, message: str = "实例聚合失败", details=None, phase: str = "instance") -> ItemPhase:  # noqa: ANN001
    return ItemPhase(instance_id, phase, PhaseResult(TaskStatus.FAILED, None, details or {"error": message}, message))


def _record(center: RunCenter, results: list[ItemPhase], expected=("instance",), run_ids=(RUN_ID,)) -> Progress | None:  # noqa: ANN001
    """Record one batch's phase results; the progress of RUN_ID if it is still open."""
    return center.record_phases(list(run_ids), results, expected).get(RUN_ID)


def _items_by_instance(center: RunCenter, run_id: str = RUN_ID) -> dict[int, dict[str, Any]]:
    return {item["instance_id"]: item for item in center.get_items(run_id)}


def _progress(run: dict[str, Any]) -> tuple[int, int, int]:
    return run["progress_total"], run["progress_completed"], run["progress_failed"]


@pytest.fixture
def center(engine: Engine) -> RunCenter:
    return RunCenter(engine)


@pytest.fixture
def three_items(center: RunCenter, whalefall) -> RunCenter:  # noqa: ANN001
    """A running run with items for instances 1, 2, 3 (all pending)."""
    for instance_id in (1, 2, 3):
        whalefall.instance(instance_id)
    center.create_run(RUN_ID, _spec())
    center.snapshot_items(RUN_ID)
    return center


def _settle(center: RunCenter, *, status: str) -> None:
    """Bring RUN_ID with three items to a finished or cancelled state."""
    _record(center, [_completed(1)])
    if status == TaskStatus.COMPLETED:
        _record(center, [_completed(2), _completed(3)])
        assert center.finalize_run(RUN_ID) == TaskStatus.COMPLETED
    elif status == TaskStatus.FAILED:
        _record(center, [_completed(2), _failed(3)])
        assert center.finalize_run(RUN_ID) == TaskStatus.FAILED
    else:
        assert center.cancel_run(RUN_ID) is True
    assert center.status(RUN_ID) == status


# -- create_run ---------------------------------------------------------------------------------


def test_create_run_inserts_a_running_run_with_zero_progress(engine, center):
    before = datetime.now(UTC)
    assert center.create_run(RUN_ID, _spec(result_url="/capacity/instances", created_by=7)) is True
    after = datetime.now(UTC)

    run = center.get_run(RUN_ID)
    assert run["run_id"] == RUN_ID
    assert run["task_key"] == "capacity_aggregate_current"
    assert run["task_name"] == "容量统计(当前周期)"
    assert run["task_category"] == "aggregation"
    assert run["trigger_source"] == "manual"
    assert run["status"] == "running"
    assert run["created_by"] == 7
    assert run["result_url"] == "/capacity/instances"
    assert run["error_message"] is None
    assert run["completed_at"] is None
    assert _progress(run) == (0, 0, 0)
    assert run["summary_json"] == SUMMARY
    assert _between(engine, run["started_at"], before, after)
    assert run["created_at"] == run["started_at"]
    assert run["updated_at"] == run["started_at"]
    assert center.get_items(RUN_ID) == []
    assert center.status(RUN_ID) == TaskStatus.RUNNING


def test_create_run_as_pending_when_asked(engine, center):
    before = datetime.now(UTC)
    assert center.create_run(RUN_ID, _spec(), status=TaskStatus.PENDING) is True
    run = center.get_run(RUN_ID)
    assert run["status"] == "pending"
    assert _between(engine, run["started_at"], before, datetime.now(UTC))
    assert run["completed_at"] is None
    assert _progress(run) == (0, 0, 0)


def test_create_run_summary_round_trips_as_json(engine, center):
    center.create_run(RUN_ID, _spec())
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT summary_json FROM task_runs")).scalar_one()
    if isinstance(stored, str):  # SQLite returns the JSON text
        stored = json.loads(stored)
    assert stored == SUMMARY


def test_create_run_with_an_existing_run_id_adopts_it(center, whalefall):
    center.create_run(RUN_ID, _spec())
    before = center.get_run(RUN_ID)
    _tick()

    assert (
        center.create_run(RUN_ID, _spec(task_name="other", summary_json={"x": 1}), status=TaskStatus.PENDING) is False
    )

    assert center.get_run(RUN_ID) == before
    assert len(whalefall.rows("task_runs", order_by="id")) == 1


# -- snapshot_items -----------------------------------------------------------------------------


def _instances_out_of_name_order(whalefall) -> None:  # noqa: ANN001
    whalefall.instance(1, "charlie")
    whalefall.instance(2, "alpha")
    whalefall.instance(3, "bravo")
    whalefall.instance(4, "aaa-inactive", active=False)
    whalefall.instance(5, "aab-deleted", deleted=True)


def test_snapshot_items_one_pending_item_per_active_instance_in_id_order(engine, center, whalefall):
    _instances_out_of_name_order(whalefall)
    center.create_run(RUN_ID, _spec())
    before = datetime.now(UTC)

    instances = center.snapshot_items(RUN_ID)

    assert instances == [ActiveInstance(1, "charlie"), ActiveInstance(2, "alpha"), ActiveInstance(3, "bravo")]
    items = center.get_items(RUN_ID)
    assert [(i["item_type"], i["item_key"], i["item_name"], i["instance_id"]) for i in items] == [
        ("instance", "1", "charlie", 1),
        ("instance", "2", "alpha", 2),
        ("instance", "3", "bravo", 3),
    ]
    for item in items:
        assert item["run_id"] == RUN_ID
        assert item["status"] == "pending"
        assert item["started_at"] is None
        assert item["completed_at"] is None
        assert item["metrics_json"] is None
        assert item["details_json"] is None
        assert item["error_message"] is None
        assert _between(engine, item["created_at"], before, datetime.now(UTC))
    assert _progress(center.get_run(RUN_ID)) == (3, 0, 0)


def test_snapshot_items_by_name_creates_items_in_name_order(center, whalefall):
    _instances_out_of_name_order(whalefall)
    center.create_run(RUN_ID, _spec())

    instances = center.snapshot_items(RUN_ID, by_name=True)

    assert instances == [ActiveInstance(2, "alpha"), ActiveInstance(3, "bravo"), ActiveInstance(1, "charlie")]
    assert [i["item_key"] for i in center.get_items(RUN_ID)] == ["2", "3", "1"]
    assert _progress(center.get_run(RUN_ID)) == (3, 0, 0)


def test_snapshot_items_is_taken_once_per_run(center, whalefall):
    _instances_out_of_name_order(whalefall)
    center.create_run(RUN_ID, _spec())
    first = center.snapshot_items(RUN_ID, by_name=True)
    items = center.get_items(RUN_ID)
    run = center.get_run(RUN_ID)
    whalefall.instance(6, "added-mid-run")

    assert center.snapshot_items(RUN_ID, by_name=True) == first
    assert center.snapshot_items(RUN_ID) == first  # the snapshot's order, whatever the caller asks

    assert center.get_items(RUN_ID) == items
    assert center.get_run(RUN_ID)["progress_total"] == run["progress_total"] == 3


def test_snapshot_items_of_a_run_started_later_is_its_own(center, whalefall):
    whalefall.instance(1)
    center.create_run(RUN_ID, _spec())
    center.snapshot_items(RUN_ID)
    whalefall.instance(2)
    center.create_run(OTHER_RUN_ID, _spec())

    assert center.snapshot_items(OTHER_RUN_ID) == [ActiveInstance(1, "instance-1"), ActiveInstance(2, "instance-2")]
    assert [i["item_key"] for i in center.get_items(RUN_ID)] == ["1"]


def test_snapshot_items_an_empty_snapshot_is_also_final(center, whalefall):
    whalefall.instance(1, active=False)
    center.create_run(RUN_ID, _spec())
    assert center.snapshot_items(RUN_ID) == []
    whalefall.instance(2)

    assert center.snapshot_items(RUN_ID) == []
    assert center.get_items(RUN_ID) == []
    assert _progress(center.get_run(RUN_ID)) == (0, 0, 0)


# -- start_items --------------------------------------------------------------------------------


def test_start_items_moves_pending_items_to_running(engine, three_items):
    center = three_items
    before = datetime.now(UTC)

    center.start_items([RUN_ID], [1, 2])

    after = datetime.now(UTC)
    items = _items_by_instance(center)
    for instance_id in (1, 2):
        assert items[instance_id]["status"] == "running"
        assert _between(engine, items[instance_id]["started_at"], before, after)
        assert _between(engine, items[instance_id]["updated_at"], before, after)
        assert items[instance_id]["completed_at"] is None
    assert items[3]["status"] == "pending"
    assert items[3]["started_at"] is None


def test_start_items_keeps_the_first_started_at(three_items):
    center = three_items
    center.start_items([RUN_ID], [1])
    started_at = _items_by_instance(center)[1]["started_at"]
    _tick()

    center.start_items([RUN_ID], [1])

    item = _items_by_instance(center)[1]
    assert item["status"] == "running"
    assert item["started_at"] == started_at


def test_start_items_leaves_terminal_items_alone(three_items):
    center = three_items
    _record(center, [_completed(1), _failed(2)])
    before = _items_by_instance(center)
    _tick()

    center.start_items([RUN_ID], [1, 2, 3])

    after = _items_by_instance(center)
    assert after[1] == before[1]
    assert after[2] == before[2]
    assert after[3]["status"] == "running"


def test_start_items_leaves_cancelled_items_alone(three_items):
    center = three_items
    center.cancel_run(RUN_ID)
    before = center.get_items(RUN_ID)
    _tick()

    center.start_items([RUN_ID], [1, 2, 3])

    assert center.get_items(RUN_ID) == before


# -- record_phases ------------------------------------------------------------------------------


def test_record_phases_completes_items_and_moves_the_counters(engine, three_items):
    center = three_items
    center.start_items([RUN_ID], [1, 2, 3])
    before = datetime.now(UTC)

    progress = _record(center, [_completed(1), _completed(2, {"records": 5}, {"message": "二"})])

    after = datetime.now(UTC)
    assert progress == Progress(total=3, completed=2, failed=0)
    items = _items_by_instance(center)
    assert items[1]["status"] == "completed"
    assert items[1]["metrics_json"] == METRICS
    assert items[1]["details_json"] == DETAILS  # one phase: exactly WhaleFall's payload, nothing added
    assert items[1]["error_message"] is None
    assert _between(engine, items[1]["completed_at"], before, after)
    assert (items[2]["metrics_json"], items[2]["details_json"]) == ({"records": 5}, {"message": "二"})
    assert items[3]["status"] == "running" and items[3]["completed_at"] is None
    run = center.get_run(RUN_ID)
    assert _progress(run) == (3, 2, 0) and run["status"] == "running"


def test_record_phases_failure_sets_error_and_details_without_metrics(engine, three_items):
    center = three_items
    before = datetime.now(UTC)

    progress = _record(center, [_failed(2, "实例 b 的 daily 聚合失败", {"error": "boom"})])

    assert progress == Progress(total=3, completed=0, failed=1)
    item = _items_by_instance(center)[2]
    assert (item["status"], item["error_message"]) == ("failed", "实例 b 的 daily 聚合失败")
    assert item["details_json"] == {"error": "boom"}
    assert item["metrics_json"] is None
    assert _between(engine, item["completed_at"], before, datetime.now(UTC))


def test_an_item_waits_for_its_last_phase_and_progress_stays_below_the_total(three_items):
    center = three_items
    both = ("database", "instance")
    database = [_completed(i, {"runner": "database"}, {"message": f"db {i}"}, "database") for i in (1, 2, 3)]

    progress = _record(center, database, both)

    assert progress == Progress(total=3, completed=0, failed=0)  # a phase is still to run
    item = _items_by_instance(center)[1]
    assert item["status"] == "running" and item["metrics_json"] is None and item["completed_at"] is None
    assert item["details_json"] == {
        "phases": {
            "database": {
                "status": "completed",
                "metrics_json": {"runner": "database"},
                "details_json": {"message": "db 1"},
                "error_message": None,
            }
        }
    }

    progress = _record(
        center, [_completed(i, {"runner": "instance"}, {"message": f"inst {i}"}) for i in (1, 2, 3)], both
    )

    assert progress == Progress(total=3, completed=3, failed=0)
    item = _items_by_instance(center)[1]
    # WhaleFall's final payload (the instance phase wrote last, compat 6.2 step 5), both phases beside it (Q10)
    assert item["status"] == "completed" and item["metrics_json"] == {"runner": "instance"}
    assert item["details_json"]["message"] == "inst 1"
    assert set(item["details_json"]["phases"]) == {"database", "instance"}


@pytest.mark.parametrize("order", [("database", "instance"), ("instance", "database")])
def test_two_phases_end_as_whalefall_leaves_the_item_whatever_order_they_arrive(three_items, order):
    center = three_items
    both = ("database", "instance")
    results = {
        "database": [
            _completed(1, {"runner": "database"}, {"message": "db ok"}, "database"),
            _failed(2, "db failed", {"error": "db"}, "database"),
            _completed(3, {"runner": "database"}, {"message": "db ok"}, "database"),
        ],
        "instance": [
            _failed(1, "instance failed", {"error": "inst"}),
            _completed(2, {"runner": "instance"}, {"message": "inst ok"}),
            _completed(3, {"runner": "instance"}, {"message": "inst ok"}),
        ],
    }
    for phase in order:
        _record(center, results[phase], both)

    items = _items_by_instance(center)
    # database completed, instance failed: fail_item keeps the earlier metrics, takes its own error
    assert (items[1]["status"], items[1]["error_message"]) == ("failed", "instance failed")
    assert items[1]["metrics_json"] == {"runner": "database"}
    assert items[1]["details_json"]["error"] == "inst"
    # database failed: the instance phase's complete_item is ignored (compat 6.1)
    assert (items[2]["status"], items[2]["error_message"], items[2]["metrics_json"]) == ("failed", "db failed", None)
    assert items[2]["details_json"]["error"] == "db"
    assert (items[3]["status"], items[3]["metrics_json"]) == ("completed", {"runner": "instance"})
    assert _progress(center.get_run(RUN_ID)) == (3, 1, 2)


def test_a_final_item_is_not_rewritten_by_a_later_result(three_items):
    center = three_items
    _record(center, [_completed(1), _failed(2)])
    before = center.get_items(RUN_ID)
    _tick()

    _record(center, [_failed(1, "late"), _completed(2)])

    assert center.get_items(RUN_ID) == before


def test_results_for_cancelled_items_and_runs_are_ignored(three_items):
    center = three_items
    _record(center, [_completed(1)])
    center.cancel_run(RUN_ID)
    items, run = center.get_items(RUN_ID), center.get_run(RUN_ID)
    _tick()

    assert _record(center, [_completed(2), _failed(3, "too late")]) is None  # the run is no longer open

    assert center.get_items(RUN_ID) == items
    assert [i["status"] for i in items] == ["completed", "cancelled", "cancelled"]
    assert center.get_run(RUN_ID) == run  # a cancelled run's counters are finalize's business


def test_one_batch_is_recorded_into_every_run_that_shares_the_work(center, whalefall):
    for instance_id in (1, 2):
        whalefall.instance(instance_id)
    for run_id in (RUN_ID, OTHER_RUN_ID):
        center.create_run(run_id, _spec())
        center.snapshot_items(run_id)
    center.cancel_run(OTHER_RUN_ID)

    progress = center.record_phases([RUN_ID, OTHER_RUN_ID], [_completed(1), _completed(2)], ("instance",))

    assert progress == {RUN_ID: Progress(total=2, completed=2, failed=0)}  # the cancelled one is left alone
    assert [i["status"] for i in center.get_items(RUN_ID)] == ["completed", "completed"]
    assert [i["status"] for i in center.get_items(OTHER_RUN_ID)] == ["cancelled", "cancelled"]


def test_no_metrics_store_sql_null_not_json_null(engine, three_items):
    center = three_items
    _record(center, [_completed(1, None, {"message": "m"}), _failed(2, "boom")])

    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT item_key, metrics_json IS NULL FROM task_run_items "
                "WHERE item_key IN ('1', '2') ORDER BY item_key"
            )
        ).all()
    assert [tuple(row) for row in rows] == [("1", True), ("2", True)]


# -- finalize_run -------------------------------------------------------------------------------


def test_finalize_run_all_completed_makes_the_run_completed(engine, three_items):
    center = three_items
    _record(center, [_completed(1), _completed(2), _completed(3)])
    before = datetime.now(UTC)

    assert center.finalize_run(RUN_ID) == TaskStatus.COMPLETED

    run = center.get_run(RUN_ID)
    assert run["status"] == "completed"
    assert _between(engine, run["completed_at"], before, datetime.now(UTC))
    assert _progress(run) == (3, 3, 0)
    assert run["summary_json"] == SUMMARY
    assert run["error_message"] is None


def test_finalize_run_with_a_failed_item_makes_the_run_failed_and_writes_the_summary(engine, three_items):
    center = three_items
    _record(center, [_completed(1), _failed(2), _completed(3)])
    before = datetime.now(UTC)

    assert center.finalize_run(RUN_ID, FINAL_SUMMARY) == TaskStatus.FAILED

    run = center.get_run(RUN_ID)
    assert run["status"] == "failed"
    assert _between(engine, run["completed_at"], before, datetime.now(UTC))
    assert _progress(run) == (3, 2, 1)
    assert run["summary_json"] == FINAL_SUMMARY


def test_finalize_run_with_open_items_and_no_failure_is_completed(three_items):
    """Spec 6.1: failed when failed > 0, otherwise completed; counters count what is settled."""
    center = three_items
    _record(center, [_completed(1)])

    assert center.finalize_run(RUN_ID) == TaskStatus.COMPLETED

    assert _progress(center.get_run(RUN_ID)) == (3, 1, 0)


def test_finalize_run_of_a_pending_run_without_items(center):
    center.create_run(RUN_ID, _spec(), status=TaskStatus.PENDING)
    assert center.finalize_run(RUN_ID) == TaskStatus.COMPLETED
    run = center.get_run(RUN_ID)
    assert run["status"] == "completed"
    assert _progress(run) == (0, 0, 0)


def test_finalize_run_of_an_unknown_run_returns_none(center):
    assert center.finalize_run(RUN_ID) is None
    assert center.get_run(RUN_ID) is None


def test_finalize_run_of_a_cancelled_run_keeps_it_cancelled_with_consistent_counters(engine, three_items):
    center = three_items
    _record(center, [_completed(1)])
    center.cancel_run(RUN_ID)
    cancelled = center.get_run(RUN_ID)
    assert _progress(cancelled) == (3, 1, 0)  # cancel does not recompute the counters
    _tick()

    assert center.finalize_run(RUN_ID, FINAL_SUMMARY) == TaskStatus.CANCELLED

    run = center.get_run(RUN_ID)
    assert run["status"] == "cancelled"
    assert _progress(run) == (3, 1, 2)  # failed counts failed + cancelled
    assert run["completed_at"] == cancelled["completed_at"]
    assert run["summary_json"] == SUMMARY  # no summary once cancelled
    assert _utc(engine, run["updated_at"]) > _utc(engine, cancelled["updated_at"])


@pytest.mark.parametrize("finished", [TaskStatus.COMPLETED, TaskStatus.FAILED])
def test_finalize_run_of_a_finished_run_changes_nothing(three_items, finished):
    center = three_items
    _settle(center, status=finished)
    run = center.get_run(RUN_ID)
    items = center.get_items(RUN_ID)
    _tick()

    assert center.finalize_run(RUN_ID, FINAL_SUMMARY) == finished

    assert center.get_run(RUN_ID) == run
    assert center.get_items(RUN_ID) == items


# -- cancel_run ---------------------------------------------------------------------------------


def test_cancel_run_cancels_the_run_and_its_open_items(engine, three_items):
    center = three_items
    _record(center, [_completed(1)])
    center.start_items([RUN_ID], [2])
    completed_item = _items_by_instance(center)[1]
    running_started_at = _items_by_instance(center)[2]["started_at"]
    before = datetime.now(UTC)

    assert center.cancel_run(RUN_ID) is True

    run = center.get_run(RUN_ID)
    assert run["status"] == "cancelled"
    assert _between(engine, run["completed_at"], before, datetime.now(UTC))
    assert run["error_message"] is None
    assert _progress(run) == (3, 1, 0)  # not recomputed (compat 6.1)
    items = _items_by_instance(center)
    assert items[1] == completed_item
    for instance_id in (2, 3):
        assert items[instance_id]["status"] == "cancelled"
        assert items[instance_id]["completed_at"] == run["completed_at"]
        assert items[instance_id]["error_message"] is None
    assert items[2]["started_at"] == running_started_at
    assert items[3]["started_at"] is None


def test_cancel_run_of_a_pending_run(engine, center):
    center.create_run(RUN_ID, _spec(), status=TaskStatus.PENDING)
    before = datetime.now(UTC)

    assert center.cancel_run(RUN_ID) is True

    run = center.get_run(RUN_ID)
    assert run["status"] == "cancelled"
    assert _between(engine, run["completed_at"], before, datetime.now(UTC))


@pytest.mark.parametrize("finished", [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_cancel_run_of_a_finished_or_cancelled_run_changes_nothing(three_items, finished):
    center = three_items
    _settle(center, status=finished)
    run = center.get_run(RUN_ID)
    items = center.get_items(RUN_ID)
    _tick()

    assert center.cancel_run(RUN_ID) is False

    assert center.get_run(RUN_ID) == run
    assert center.get_items(RUN_ID) == items


def test_cancel_run_of_an_unknown_run_returns_false(center):
    assert center.cancel_run(RUN_ID) is False


# -- mark_run_failed ----------------------------------------------------------------------------


def test_mark_run_failed_fails_the_run_and_its_open_items(engine, three_items):
    center = three_items
    _record(center, [_completed(1)])
    center.start_items([RUN_ID], [2])
    completed_item = _items_by_instance(center)[1]
    before = datetime.now(UTC)

    assert center.mark_run_failed(RUN_ID, "Dagster run failed") is True

    run = center.get_run(RUN_ID)
    assert run["status"] == "failed"
    assert run["error_message"] == "Dagster run failed"
    assert _between(engine, run["completed_at"], before, datetime.now(UTC))
    assert _progress(run) == (3, 1, 2)
    items = _items_by_instance(center)
    assert items[1] == completed_item
    for instance_id in (2, 3):
        assert items[instance_id]["status"] == "failed"
        assert items[instance_id]["error_message"] == "Dagster run failed"
        assert items[instance_id]["completed_at"] == run["completed_at"]


def test_mark_run_failed_of_a_pending_run_without_items(center):
    center.create_run(RUN_ID, _spec(), status=TaskStatus.PENDING)
    assert center.mark_run_failed(RUN_ID, "never started") is True
    run = center.get_run(RUN_ID)
    assert (run["status"], run["error_message"], _progress(run)) == ("failed", "never started", (0, 0, 0))


@pytest.mark.parametrize("finished", [TaskStatus.CANCELLED, TaskStatus.COMPLETED, TaskStatus.FAILED])
def test_mark_run_failed_is_a_no_op_on_a_cancelled_or_finished_run(three_items, finished):
    center = three_items
    _settle(center, status=finished)
    run = center.get_run(RUN_ID)
    items = center.get_items(RUN_ID)
    _tick()

    assert center.mark_run_failed(RUN_ID, "late failure") is False

    assert center.get_run(RUN_ID) == run
    assert center.get_items(RUN_ID) == items


# -- write_summary ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [TaskStatus.RUNNING, TaskStatus.PENDING])
def test_write_summary_replaces_the_summary_of_an_open_run(engine, center, status):
    center.create_run(RUN_ID, _spec(), status=status)
    before = center.get_run(RUN_ID)
    _tick()

    center.write_summary(RUN_ID, FINAL_SUMMARY)

    run = center.get_run(RUN_ID)
    assert run["summary_json"] == FINAL_SUMMARY
    assert run["status"] == status
    assert _utc(engine, run["updated_at"]) > _utc(engine, before["updated_at"])


@pytest.mark.parametrize("finished", [TaskStatus.CANCELLED, TaskStatus.COMPLETED, TaskStatus.FAILED])
def test_write_summary_is_ignored_once_cancelled_or_finished(three_items, finished):
    center = three_items
    _settle(center, status=finished)
    run = center.get_run(RUN_ID)
    _tick()

    center.write_summary(RUN_ID, FINAL_SUMMARY)

    assert center.get_run(RUN_ID) == run


# -- forward-only under out-of-order calls ------------------------------------------------------


def test_late_calls_after_a_cancel_leave_the_run_cancelled(three_items):
    center = three_items
    _record(center, [_completed(1)])
    center.cancel_run(RUN_ID)
    completed_at = center.get_run(RUN_ID)["completed_at"]

    assert center.finalize_run(RUN_ID, FINAL_SUMMARY) == TaskStatus.CANCELLED
    settled = center.get_run(RUN_ID)
    items = center.get_items(RUN_ID)
    _tick()
    assert center.mark_run_failed(RUN_ID, "late failure") is False
    center.write_summary(RUN_ID, FINAL_SUMMARY)
    center.start_items([RUN_ID], [1, 2, 3])
    _record(center, [_completed(2), _failed(3)])
    assert center.cancel_run(RUN_ID) is False

    run = center.get_run(RUN_ID)
    assert run == settled
    assert run["status"] == "cancelled"
    assert run["error_message"] is None
    assert run["completed_at"] == completed_at
    assert run["summary_json"] == SUMMARY
    assert _progress(run) == (3, 1, 2)
    assert center.get_items(RUN_ID) == items
    assert [i["status"] for i in items] == ["completed", "cancelled", "cancelled"]


def test_late_calls_after_finalize_change_nothing(three_items):
    center = three_items
    _record(center, [_completed(1), _completed(2), _completed(3)])
    assert center.finalize_run(RUN_ID, FINAL_SUMMARY) == TaskStatus.COMPLETED
    run = center.get_run(RUN_ID)
    items = center.get_items(RUN_ID)
    _tick()

    assert center.cancel_run(RUN_ID) is False
    assert center.mark_run_failed(RUN_ID, "late failure") is False
    center.write_summary(RUN_ID, SUMMARY)
    assert center.finalize_run(RUN_ID) == TaskStatus.COMPLETED

    assert center.get_run(RUN_ID) == run
    assert center.get_items(RUN_ID) == items
    assert (run["status"], _progress(run), run["summary_json"]) == ("completed", (3, 3, 0), FINAL_SUMMARY)


def test_finalize_after_mark_run_failed_keeps_failed(three_items):
    center = three_items
    _record(center, [_completed(1), _completed(2), _completed(3)])
    center.mark_run_failed(RUN_ID, "worker died")
    run = center.get_run(RUN_ID)
    _tick()

    assert center.finalize_run(RUN_ID, FINAL_SUMMARY) == TaskStatus.FAILED
    assert center.cancel_run(RUN_ID) is False

    assert center.get_run(RUN_ID) == run
    assert (run["status"], run["error_message"], _progress(run)) == ("failed", "worker died", (3, 3, 0))


# -- updated_at ---------------------------------------------------------------------------------


def _assert_bumps_updated_at(engine: Engine, center: RunCenter, run_id: str, write: Callable[[], object]) -> None:
    before = _utc(engine, center.get_run(run_id)["updated_at"])
    _tick()
    write()
    assert _utc(engine, center.get_run(run_id)["updated_at"]) > before


def test_every_write_that_changes_a_run_refreshes_updated_at(engine, center, whalefall):
    for instance_id in (1, 2, 3):
        whalefall.instance(instance_id)
    center.create_run(RUN_ID, _spec(), status=TaskStatus.PENDING)
    bump = lambda write: _assert_bumps_updated_at(engine, center, RUN_ID, write)  # noqa: E731

    bump(lambda: center.snapshot_items(RUN_ID))
    bump(lambda: _record(center, [_completed(1)]))
    bump(lambda: center.write_summary(RUN_ID, FINAL_SUMMARY))
    bump(lambda: _record(center, [_failed(2)]))
    bump(lambda: center.finalize_run(RUN_ID))

    center.create_run(OTHER_RUN_ID, _spec())
    center.snapshot_items(OTHER_RUN_ID)
    bump_other = lambda write: _assert_bumps_updated_at(engine, center, OTHER_RUN_ID, write)  # noqa: E731
    bump_other(lambda: center.cancel_run(OTHER_RUN_ID))
    bump_other(lambda: center.finalize_run(OTHER_RUN_ID))


def test_mark_run_failed_refreshes_updated_at(engine, three_items):
    _assert_bumps_updated_at(engine, three_items, RUN_ID, lambda: three_items.mark_run_failed(RUN_ID, "boom"))


def test_item_writes_refresh_the_items_updated_at(engine, three_items):
    center = three_items

    def item_updated_at(instance_id: int) -> datetime:
        return _utc(engine, _items_by_instance(center)[instance_id]["updated_at"])

    both = ("database", "instance")
    for write in (
        lambda: center.start_items([RUN_ID], [1]),
        lambda: _record(center, [_completed(1, phase="database")], both),  # still open after it
        lambda: _record(center, [_failed(1)], both),  # final
    ):
        before = item_updated_at(1)
        _tick()
        write()
        assert item_updated_at(1) > before
    before = item_updated_at(2)
    _tick()
    center.cancel_run(RUN_ID)
    assert item_updated_at(2) > before
