"""The one rule that ends a TaskRun (settle.py): every outcome, forward-only status, and counters
that always equal the items (compat 6.1 finalize_run, fixing Q14).

Every test runs on SQLite and PostgreSQL; WhaleFall's own cancel is support.whalefall_cancel, written
independently of the pipeline. The property test generates item states and outcomes with hypothesis.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, update

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import Scope, TaskStatus
from capacity_pipeline.domain.run_center.payloads import current_summary
from capacity_pipeline.domain.run_center.settle import (
    Cancelled,
    Failed,
    Interrupted,
    Settlement,
    Succeeded,
    WorkerLost,
    inconsistent_task_runs,
    settle,
)
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.storage.tables import tables_for
from capacity_pipeline_tests.support import (
    TASK_RUN_ID as RUN_ID,
)
from capacity_pipeline_tests.support import (
    TASK_RUN_SUMMARY as SUMMARY,
)
from capacity_pipeline_tests.support import (
    SteppingClock,
    completed_phase,
    failed_phase,
    stored_utc,
    task_run_spec,
    whalefall_cancel,
)

FAILURES = [Failed("Dagster run x failed: lock timeout"), Interrupted("interrupted"), WorkerLost("worker killed")]
EVERY_OUTCOME = [Succeeded(), Succeeded(run_ended=False), Cancelled(by=7), *FAILURES]


def _progress(run: dict[str, Any]) -> tuple[int, int, int]:
    return run["progress_total"], run["progress_completed"], run["progress_failed"]


def _counted(items: list[dict[str, Any]]) -> tuple[int, int, int]:
    """The counters compat 6.1's finalize_run computes from these items."""
    statuses = [item["status"] for item in items]
    return len(items), statuses.count("completed"), statuses.count("failed") + statuses.count("cancelled")


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture
def center(engine: Engine, clock: SteppingClock) -> RunCenter:
    return RunCenter(engine, clock=clock)


@pytest.fixture
def three_items(center: RunCenter, whalefall) -> RunCenter:  # noqa: ANN001
    """A running run with items for instances 1 (completed), 2 (running) and 3 (pending)."""
    for instance_id in (1, 2, 3):
        whalefall.instance(instance_id)
    center.create_run(RUN_ID, task_run_spec())
    center.snapshot_items(RUN_ID)
    center.record_phases([RUN_ID], [completed_phase(1)], ["instance"])
    center.start_items([RUN_ID], [2])
    return center


def _settle(center: RunCenter, outcome: Any, run_id: str = RUN_ID) -> Settlement:
    return settle(center.engine, run_id, outcome, clock=center.clock)


# -- ending an open TaskRun -----------------------------------------------------------------------


def test_succeeded_with_every_item_final_completes_the_run(engine, three_items, clock):
    center = three_items
    center.record_phases([RUN_ID], [completed_phase(2), completed_phase(3)], ["instance"])
    before = clock.now()

    assert _settle(center, Succeeded()) == Settlement(RUN_ID, TaskStatus.COMPLETED, ended_now=True)

    run = center.get_run(RUN_ID)
    assert (run["status"], _progress(run), run["error_message"]) == ("completed", (3, 3, 0), None)
    assert before < stored_utc(engine, run["completed_at"]) <= clock.now()
    assert run["summary_json"] == SUMMARY  # no period in it: not a current-period summary to fill in


def test_succeeded_with_a_failed_item_fails_the_run_without_a_message(three_items):
    """compat 6.1 finalize_run: failed when an item failed; the items say why (compat 6.2)."""
    center = three_items
    center.record_phases([RUN_ID], [failed_phase(2), completed_phase(3)], ["instance"])

    assert _settle(center, Succeeded()).status is TaskStatus.FAILED

    run = center.get_run(RUN_ID)
    assert (run["status"], _progress(run), run["error_message"]) == ("failed", (3, 2, 1), None)


def test_succeeded_fills_in_the_current_period_summary_from_the_items(engine, whalefall, center):
    whalefall.instance(1)
    summary = current_summary(c.CURRENT_TASK_KEY, Scope.INSTANCE, extra={"period_start": "2026-07-01"})
    center.create_run(RUN_ID, task_run_spec(summary_json=summary))
    center.snapshot_items(RUN_ID)
    center.record_phases([RUN_ID], [failed_phase(1, details={"status": "failed", "error": "boom"})], ["instance"])

    _settle(center, Succeeded())

    data = center.get_run(RUN_ID)["summary_json"]["ext"]["data"]
    assert (data["status"], data["message"]) == ("failed", "当前周期聚合完成,但存在失败的子任务")


def test_a_step_that_succeeded_leaves_a_run_with_open_items_to_its_next_step(three_items):
    center = three_items
    run, items = center.get_run(RUN_ID), center.get_items(RUN_ID)

    assert _settle(center, Succeeded(run_ended=False)) == Settlement(RUN_ID, TaskStatus.RUNNING)

    assert center.get_run(RUN_ID) == run and center.get_items(RUN_ID) == items


def test_a_run_that_ended_with_open_items_fails_them_saying_which_phase_never_ran(whalefall, center):
    for instance_id in (1, 2):
        whalefall.instance(instance_id)
    center.create_run(RUN_ID, task_run_spec())  # scope all: a database and an instance phase
    center.snapshot_items(RUN_ID)
    both = ["database", "instance"]
    center.record_phases([RUN_ID], [completed_phase(1, phase="database"), completed_phase(2, phase="database")], both)
    center.record_phases([RUN_ID], [completed_phase(1)], both)

    assert _settle(center, Succeeded()).status is TaskStatus.FAILED

    run = center.get_run(RUN_ID)
    first, second = center.get_items(RUN_ID)
    assert (run["error_message"], _progress(run)) == ("1 item(s) unfinished when the run ended", (2, 1, 1))
    assert first["status"] == "completed"
    assert second["status"] == "failed" and second["completed_at"] is not None
    assert second["error_message"] == "the run ended before this instance was finished: the instance phase never ran"
    assert set(second["details_json"]["phases"]) == {"database"}  # what it did do stays


@pytest.mark.parametrize("failure", FAILURES, ids=lambda f: type(f).__name__)
def test_a_failure_fails_the_run_and_its_open_items_with_the_reason(engine, three_items, clock, failure):
    center = three_items
    completed = center.get_items(RUN_ID)[0]
    before = clock.now()

    assert _settle(center, failure) == Settlement(RUN_ID, TaskStatus.FAILED, ended_now=True)

    run = center.get_run(RUN_ID)
    assert (run["status"], run["error_message"], _progress(run)) == ("failed", failure.reason, (3, 1, 2))
    assert before < stored_utc(engine, run["completed_at"]) <= clock.now()
    first, second, third = center.get_items(RUN_ID)
    assert first == completed
    for item in (second, third):
        assert (item["status"], item["error_message"], item["completed_at"]) == (
            "failed",
            failure.reason,
            run["completed_at"],
        )


def test_a_cancel_cancels_the_run_and_its_open_items_with_counters_from_the_items(engine, three_items, clock):
    """The API's cancel: WhaleFall's cancel_run, and counters at once (WhaleFall leaves them, Q14)."""
    center = three_items
    completed, running = center.get_items(RUN_ID)[:2]
    before = clock.now()

    assert _settle(center, Cancelled(by=7)) == Settlement(RUN_ID, TaskStatus.CANCELLED, ended_now=True)

    run = center.get_run(RUN_ID)
    assert (run["status"], run["error_message"], _progress(run)) == ("cancelled", None, (3, 1, 2))
    assert before < stored_utc(engine, run["completed_at"]) <= clock.now()
    assert run["summary_json"]["ext"]["data"]["cancelled_by"] == 7  # the worker names who cancelled
    first, second, third = center.get_items(RUN_ID)
    assert first == completed
    assert [i["status"] for i in (second, third)] == ["cancelled", "cancelled"]
    assert second["started_at"] == running["started_at"] and third["started_at"] is None
    assert second["completed_at"] == third["completed_at"] == run["completed_at"]


@pytest.mark.parametrize("outcome", [Succeeded(), Cancelled(), Failed("never started")], ids=repr)
def test_a_pending_run_without_items_ends_as_its_outcome_says(center, outcome):
    center.create_run(RUN_ID, task_run_spec(), status=TaskStatus.PENDING)

    status = _settle(center, outcome).status

    assert status == {Succeeded: "completed", Cancelled: "cancelled", Failed: "failed"}[type(outcome)]
    assert _progress(center.get_run(RUN_ID)) == (0, 0, 0)


def test_an_unknown_task_run_is_not_settled(center):
    assert _settle(center, Cancelled()) == Settlement(RUN_ID, None)
    assert center.get_run(RUN_ID) is None


# -- forward only ---------------------------------------------------------------------------------


def _ended(center: RunCenter, status: TaskStatus) -> None:
    if status is TaskStatus.COMPLETED:
        center.record_phases([RUN_ID], [completed_phase(2), completed_phase(3)], ["instance"])
        _settle(center, Succeeded())
    elif status is TaskStatus.FAILED:
        _settle(center, Failed("boom"))
    else:
        _settle(center, Cancelled())
    assert center.status(RUN_ID) == status


@pytest.mark.parametrize("outcome", EVERY_OUTCOME, ids=repr)
@pytest.mark.parametrize("ended", [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_a_task_run_that_ended_is_left_alone_whatever_comes_later(three_items, ended, outcome):
    center = three_items
    _ended(center, ended)
    run, items = center.get_run(RUN_ID), center.get_items(RUN_ID)

    assert _settle(center, outcome) == Settlement(RUN_ID, ended)
    center.record_phases([RUN_ID], [failed_phase(2), completed_phase(3)], ["instance"])
    center.start_items([RUN_ID], [1, 2, 3])
    center.write_summary(RUN_ID, {"version": 1})
    assert not whalefall_cancel(center.engine, RUN_ID)

    assert center.get_run(RUN_ID) == run and center.get_items(RUN_ID) == items


# -- WhaleFall's cancel, made consistent ---------------------------------------------------------


@pytest.mark.parametrize("outcome", EVERY_OUTCOME, ids=repr)
def test_whalefall_s_cancel_is_made_consistent_by_the_next_caller_and_stays_cancelled(three_items, outcome):
    center = three_items
    assert whalefall_cancel(center.engine, RUN_ID)
    cancelled = center.get_run(RUN_ID)
    assert _progress(cancelled) == (3, 1, 0)  # WhaleFall does not recompute the counters (compat 6.1)

    assert _settle(center, outcome) == Settlement(RUN_ID, TaskStatus.CANCELLED, repaired=True)

    run = center.get_run(RUN_ID)
    assert (run["status"], _progress(run), run["error_message"]) == ("cancelled", (3, 1, 2), None)
    assert run["completed_at"] == cancelled["completed_at"]
    assert run["summary_json"] == SUMMARY  # no summary once cancelled
    assert _settle(center, outcome) == Settlement(RUN_ID, TaskStatus.CANCELLED)  # nothing left to repair


def test_a_failed_task_run_with_open_items_and_no_completion_time_is_made_consistent(engine, three_items):
    """Rows a bug or an older version left: the status stays, everything else follows it."""
    center = three_items
    runs = tables_for(engine).tables["task_runs"]
    with engine.begin() as connection:
        connection.execute(update(runs).values(status="failed", error_message="worker died", completed_at=None))

    assert _settle(center, Succeeded()).repaired

    run = center.get_run(RUN_ID)
    assert (run["status"], _progress(run)) == ("failed", (3, 1, 2)) and run["completed_at"] is not None
    assert [(i["status"], i["error_message"]) for i in center.get_items(RUN_ID)] == [
        ("completed", None),
        ("failed", "worker died"),
        ("failed", "worker died"),
    ]


def test_closed_task_runs_whose_counters_disagree_are_found(engine, whalefall, center, clock):
    for instance_id in (1, 2):
        whalefall.instance(instance_id)
    ids = {name: str(uuid.uuid4()) for name in ("stale", "consistent", "open", "old", "foreign")}
    for name, run_id in ids.items():
        spec = task_run_spec(task_key="some_other_task") if name == "foreign" else task_run_spec()
        center.create_run(run_id, spec)
        center.snapshot_items(run_id)
        center.record_phases([run_id], [completed_phase(1)], ["instance"])
    for name in ("stale", "old", "foreign"):
        assert whalefall_cancel(engine, ids[name])  # counters left at (2, 1, 0)
    _settle(center, Cancelled(), ids["consistent"])
    runs = tables_for(engine).tables["task_runs"]
    with engine.begin() as connection:
        connection.execute(
            update(runs).where(runs.c.run_id == ids["old"]).values(started_at=clock.now() - timedelta(days=3))
        )

    found = inconsistent_task_runs(engine, [c.CURRENT_TASK_KEY], started_since=clock.now() - timedelta(days=2))

    assert found == [ids["stale"]]


# -- the property: whatever the items, the settled TaskRun agrees with them -----------------------

ITEM_STATES = st.lists(st.sampled_from(["pending", "running", "completed", "failed"]), min_size=0, max_size=6)
OUTCOMES = st.sampled_from(EVERY_OUTCOME)


@pytest.fixture
def six_instances(whalefall) -> None:  # noqa: ANN001
    for instance_id in range(1, 7):
        whalefall.instance(instance_id)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(states=ITEM_STATES, outcome=OUTCOMES, whalefall_cancelled_first=st.booleans())
def test_a_settled_task_run_always_agrees_with_its_items(
    engine, six_instances, states, outcome, whalefall_cancelled_first
):
    center = RunCenter(engine, clock=SteppingClock())
    run_id = str(uuid.uuid4())
    center.create_run(run_id, task_run_spec())
    instances = center.snapshot_items(run_id)
    items = dict(zip((instance.id for instance in instances), states, strict=False))
    center.start_items([run_id], [i for i, state in items.items() if state != "pending"])
    center.record_phases(
        [run_id],
        [
            completed_phase(i) if state == "completed" else failed_phase(i)
            for i, state in items.items()
            if state in ("completed", "failed")
        ],
        ["instance"],
    )
    if whalefall_cancelled_first:
        whalefall_cancel(engine, run_id)
    before = center.get_run(run_id)

    settled = _settle(center, outcome, run_id)

    run, stored = center.get_run(run_id), center.get_items(run_id)
    waiting = outcome == Succeeded(run_ended=False) and not whalefall_cancelled_first
    if waiting and any(item["status"] in ("pending", "running") for item in stored):
        assert run == before and not settled.ended_now  # the run's next step will write them
        return
    assert run["status"] in ("completed", "failed", "cancelled") and run["completed_at"] is not None
    assert not [item for item in stored if item["status"] in ("pending", "running")]
    assert _progress(run) == _counted(stored)
    if whalefall_cancelled_first:
        assert run["status"] == "cancelled" and not settled.ended_now
    elif isinstance(outcome, Cancelled):
        assert run["status"] == "cancelled"
    elif isinstance(outcome, Succeeded):
        assert run["status"] == ("failed" if _counted(stored)[2] else "completed")
    else:
        assert (run["status"], run["error_message"]) == ("failed", outcome.reason)
    assert _settle(center, outcome, run_id) == Settlement(run_id, TaskStatus(run["status"]))  # and it stays so
