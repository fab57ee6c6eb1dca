"""The run center's rows (compat 6.1): creating a run, its items, each batch's results, summaries.

How a run ends is settle.py's rule, tested in test_settle.py. Every test runs on SQLite and
PostgreSQL, with a clock that moves at every write (support.SteppingClock), so successive writes
get distinct timestamps without sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from capacity_pipeline.domain.model import ActiveInstance, TaskStatus
from capacity_pipeline.domain.run_center.settle import Cancelled, Failed, Succeeded, settle
from capacity_pipeline.domain.run_center.task_runs import ItemPhase, Progress, RunCenter
from capacity_pipeline_tests.support import (
    OTHER_TASK_RUN_ID as OTHER_RUN_ID,
)
from capacity_pipeline_tests.support import (
    PHASE_DETAILS as DETAILS,
)
from capacity_pipeline_tests.support import (
    PHASE_METRICS as METRICS,
)
from capacity_pipeline_tests.support import (
    TASK_RUN_ID as RUN_ID,
)
from capacity_pipeline_tests.support import (
    TASK_RUN_SUMMARY as SUMMARY,
)
from capacity_pipeline_tests.support import (
    SteppingClock,
    whalefall_cancel,
)
from capacity_pipeline_tests.support import (
    completed_phase as _completed,
)
from capacity_pipeline_tests.support import (
    failed_phase as _failed,
)
from capacity_pipeline_tests.support import (
    stored_utc as _utc,
)
from capacity_pipeline_tests.support import (
    task_run_spec as _spec,
)

THIRD_RUN_ID = "33333333-3333-4333-8333-333333333333"
FINAL_SUMMARY = {
    "version": 1,
    "common": {"inputs": {}},
    "ext": {"type": "capacity_aggregate_current", "data": {"n": 3}},
}


def _between(engine: Engine, value, before, after) -> bool:  # noqa: ANN001
    return value is not None and before <= _utc(engine, value) <= after


def _record(center: RunCenter, results: list[ItemPhase], expected=("instance",), run_ids=(RUN_ID,)) -> Progress | None:  # noqa: ANN001
    """Record one batch's phase results; the progress of RUN_ID if it is still open."""
    return center.record_phases(list(run_ids), results, expected).get(RUN_ID)


def _items_by_instance(center: RunCenter, run_id: str = RUN_ID) -> dict[int, dict[str, Any]]:
    return {item["instance_id"]: item for item in center.get_items(run_id)}


def _progress(run: dict[str, Any]) -> tuple[int, int, int]:
    return run["progress_total"], run["progress_completed"], run["progress_failed"]


@pytest.fixture
def center(engine: Engine) -> RunCenter:
    return RunCenter(engine, clock=SteppingClock())


@pytest.fixture
def three_items(center: RunCenter, whalefall) -> RunCenter:  # noqa: ANN001
    """A running run with items for instances 1, 2, 3 (all pending)."""
    for instance_id in (1, 2, 3):
        whalefall.instance(instance_id)
    center.create_run(RUN_ID, _spec())
    center.snapshot_items(RUN_ID)
    return center


def _end(center: RunCenter, *, status: str) -> None:
    """Bring RUN_ID with three items to a finished or cancelled state."""
    _record(center, [_completed(1)])
    if status == TaskStatus.COMPLETED:
        _record(center, [_completed(2), _completed(3)])
        outcome = Succeeded()
    elif status == TaskStatus.FAILED:
        _record(center, [_completed(2), _failed(3)])
        outcome = Succeeded()
    else:
        outcome = Cancelled()
    assert settle(center.engine, RUN_ID, outcome, clock=center.clock).status == status


# -- create_run ---------------------------------------------------------------------------------


def test_create_run_inserts_a_running_run_with_zero_progress(engine, center):
    before = center.clock.now()
    assert center.create_run(RUN_ID, _spec(result_url="/capacity/instances", created_by=7)) is True
    after = center.clock.now()

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
    before = center.clock.now()
    assert center.create_run(RUN_ID, _spec(), status=TaskStatus.PENDING) is True
    run = center.get_run(RUN_ID)
    assert run["status"] == "pending"
    assert _between(engine, run["started_at"], before, center.clock.now())
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
    before = center.clock.now()

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
        assert _between(engine, item["created_at"], before, center.clock.now())
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
    before = center.clock.now()

    center.start_items([RUN_ID], [1, 2])

    after = center.clock.now()
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

    center.start_items([RUN_ID], [1])

    item = _items_by_instance(center)[1]
    assert item["status"] == "running"
    assert item["started_at"] == started_at


def test_start_items_leaves_terminal_items_alone(three_items):
    center = three_items
    _record(center, [_completed(1), _failed(2)])
    before = _items_by_instance(center)

    center.start_items([RUN_ID], [1, 2, 3])

    after = _items_by_instance(center)
    assert after[1] == before[1]
    assert after[2] == before[2]
    assert after[3]["status"] == "running"


def test_start_items_leaves_cancelled_items_alone(three_items):
    center = three_items
    settle(center.engine, RUN_ID, Cancelled(), clock=center.clock)
    before = center.get_items(RUN_ID)

    center.start_items([RUN_ID], [1, 2, 3])

    assert center.get_items(RUN_ID) == before


# -- record_phases ------------------------------------------------------------------------------


def test_record_phases_completes_items_and_moves_the_counters(engine, three_items):
    center = three_items
    center.start_items([RUN_ID], [1, 2, 3])
    before = center.clock.now()

    progress = _record(center, [_completed(1), _completed(2, {"records": 5}, {"message": "二"})])

    after = center.clock.now()
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
    before = center.clock.now()

    progress = _record(center, [_failed(2, "实例 b 的 daily 聚合失败", {"error": "boom"})])

    assert progress == Progress(total=3, completed=0, failed=1)
    item = _items_by_instance(center)[2]
    assert (item["status"], item["error_message"]) == ("failed", "实例 b 的 daily 聚合失败")
    assert item["details_json"] == {"error": "boom"}
    assert item["metrics_json"] is None
    assert _between(engine, item["completed_at"], before, center.clock.now())


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

    _record(center, [_failed(1, "late"), _completed(2)])

    assert center.get_items(RUN_ID) == before


def test_results_for_cancelled_items_and_runs_are_ignored(three_items):
    center = three_items
    _record(center, [_completed(1)])
    settle(center.engine, RUN_ID, Cancelled(), clock=center.clock)
    items, run = center.get_items(RUN_ID), center.get_run(RUN_ID)

    assert _record(center, [_completed(2), _failed(3, "too late")]) is None  # the run is no longer open

    assert center.get_items(RUN_ID) == items
    assert [i["status"] for i in items] == ["completed", "cancelled", "cancelled"]
    assert center.get_run(RUN_ID) == run  # a cancelled run is not written any more


def test_one_batch_is_recorded_into_every_run_that_shares_the_work(center, whalefall):
    for instance_id in (1, 2):
        whalefall.instance(instance_id)
    for run_id in (RUN_ID, OTHER_RUN_ID):
        center.create_run(run_id, _spec())
        center.snapshot_items(run_id)
    settle(center.engine, OTHER_RUN_ID, Cancelled(), clock=center.clock)

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


# -- write_summary ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [TaskStatus.RUNNING, TaskStatus.PENDING])
def test_write_summary_replaces_the_summary_of_an_open_run(engine, center, status):
    center.create_run(RUN_ID, _spec(), status=status)
    before = center.get_run(RUN_ID)

    center.write_summary(RUN_ID, FINAL_SUMMARY)

    run = center.get_run(RUN_ID)
    assert run["summary_json"] == FINAL_SUMMARY
    assert run["status"] == status
    assert _utc(engine, run["updated_at"]) > _utc(engine, before["updated_at"])


@pytest.mark.parametrize("finished", [TaskStatus.CANCELLED, TaskStatus.COMPLETED, TaskStatus.FAILED])
def test_write_summary_is_ignored_once_cancelled_or_finished(three_items, finished):
    center = three_items
    _end(center, status=finished)
    run = center.get_run(RUN_ID)

    center.write_summary(RUN_ID, FINAL_SUMMARY)

    assert center.get_run(RUN_ID) == run


# -- updated_at ---------------------------------------------------------------------------------


def _assert_bumps_updated_at(engine: Engine, center: RunCenter, run_id: str, write: Callable[[], object]) -> None:
    before = _utc(engine, center.get_run(run_id)["updated_at"])
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
    bump(lambda: settle(engine, RUN_ID, Succeeded(), clock=center.clock))

    center.create_run(OTHER_RUN_ID, _spec())
    center.snapshot_items(OTHER_RUN_ID)
    bump_other = lambda write: _assert_bumps_updated_at(engine, center, OTHER_RUN_ID, write)  # noqa: E731
    bump_other(lambda: settle(engine, OTHER_RUN_ID, Cancelled(), clock=center.clock))

    center.create_run(THIRD_RUN_ID, _spec())
    center.snapshot_items(THIRD_RUN_ID)
    assert whalefall_cancel(engine, THIRD_RUN_ID)  # its counters left as they were
    bump_third = lambda write: _assert_bumps_updated_at(engine, center, THIRD_RUN_ID, write)  # noqa: E731
    bump_third(lambda: settle(engine, THIRD_RUN_ID, Succeeded(), clock=center.clock))  # made consistent


def test_failing_a_run_refreshes_updated_at(engine, three_items):
    fail = lambda: settle(engine, RUN_ID, Failed("boom"), clock=three_items.clock)  # noqa: E731
    _assert_bumps_updated_at(engine, three_items, RUN_ID, fail)


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
        write()
        assert item_updated_at(1) > before
    before = item_updated_at(2)
    settle(center.engine, RUN_ID, Cancelled(), clock=center.clock)
    assert item_updated_at(2) > before
