"""The run center under concurrent writers, on PostgreSQL (SQLite serialises every writer).

A cancel (WhaleFall's: the run row, then its items) races a worker's batch write, started together
by a barrier, many times over. A trigger that pauses inside every item update widens the window
in which both transactions hold their first lock, so a writer that took items before the run
would deadlock every time; the control test shows that it does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from capacity_pipeline.domain.model import TaskStatus
from capacity_pipeline.domain.run_center.payloads import PhaseResult
from capacity_pipeline.domain.run_center.settle import Cancelled, settle
from capacity_pipeline.domain.run_center.task_runs import ItemPhase, RunCenter, TaskRunSpec
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline_tests.support import WhaleFallData, url_of, wait_until, whalefall_cancel

ITERATIONS = 30
INSTANCES = (1, 2, 3, 4)
SPEC = TaskRunSpec("capacity_aggregate_current", "容量统计(当前周期)", "manual", {"version": 1})


@contextmanager
def slow_item_updates(engine: Engine, seconds: float = 0.02) -> Iterator[None]:
    """Every UPDATE of a task_run_items row takes `seconds` longer (a real trigger with pg_sleep)."""
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE FUNCTION test_slow_items() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER test_slow_items BEFORE UPDATE ON task_run_items "
            "FOR EACH ROW EXECUTE FUNCTION test_slow_items()"
        )
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER test_slow_items ON task_run_items")
            connection.exec_driver_sql("DROP FUNCTION test_slow_items()")


@contextmanager
def racers(engine: Engine) -> Iterator[Engine]:
    """An engine of its own for the racing writers. On leaving, its sessions are closed and waited
    for until they are gone: a backend flushes its statistics (deadlocks among them) as it exits,
    so the count read afterwards is complete."""
    own, pids = make_engine(url_of(engine)), set()
    event.listen(own, "connect", lambda dbapi_connection, _record: pids.add(dbapi_connection.info.backend_pid))
    try:
        yield own
    finally:
        own.dispose()

        def exited() -> bool:
            with engine.connect() as connection:
                alive = connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"), {"pids": list(pids)}
                ).scalar()
            return alive == 0

        wait_until(exited, 10, "the racing sessions to exit", interval=0.05)


def _race(*calls: Callable[[], object]) -> list[BaseException | None]:
    """Run the calls in threads released together by a barrier; each one's exception, or None."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            calls[index]()
        except BaseException as error:  # noqa: BLE001 - reported by the caller's assertions
            errors[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def _batch(phase: str = "instance") -> list[ItemPhase]:
    return [
        ItemPhase(i, phase, PhaseResult(TaskStatus.COMPLETED, {"n": i}, {"message": f"done {i}"})) for i in INSTANCES
    ]


@pytest.fixture
def instances(pg_whalefall: WhaleFallData) -> WhaleFallData:
    for instance_id in INSTANCES:
        pg_whalefall.instance(instance_id)
    return pg_whalefall


def test_a_cancel_racing_a_batch_write_never_deadlocks_and_always_ends_consistent(pg_engine, instances):
    outcomes, deadlocks_before = set(), _deadlocks(pg_engine)
    with slow_item_updates(pg_engine), racers(pg_engine) as engine:
        center = RunCenter(engine)
        for iteration in range(ITERATIONS):
            run_id = f"race-{iteration:03d}"
            center.create_run(run_id, SPEC)
            center.snapshot_items(run_id)
            center.start_items([run_id], list(INSTANCES))

            def worker(run_id: str = run_id) -> None:
                # The worker's batch write, then what it does when it sees the run closed.
                if run_id not in center.record_phases([run_id], _batch(), ["instance"]):
                    settle(engine, run_id, Cancelled())

            errors = _race(lambda run_id=run_id: whalefall_cancel(engine, run_id), worker)

            assert errors == [None, None], (iteration, errors)
            run, items = center.get_run(run_id), center.get_items(run_id)
            statuses = [item["status"] for item in items]
            # All or nothing per transaction: the batch landed before the cancel, or not at all.
            assert statuses in (["completed"] * 4, ["cancelled"] * 4), (iteration, statuses)
            assert run["status"] == "cancelled" and run["completed_at"] is not None
            completed = statuses.count("completed")
            assert (run["progress_total"], run["progress_completed"], run["progress_failed"]) == (
                4,
                completed,
                4 - completed,
            ), iteration
            outcomes.add(statuses[0])
    # Both orders happened: the race was real, not one side always first.
    assert outcomes == {"completed", "cancelled"}, outcomes
    # And not one deadlock (a retry would hide it): every writer takes the run row first.
    assert _deadlocks(pg_engine) == deadlocks_before


def test_control_a_writer_taking_items_before_the_run_deadlocks_with_the_cancel(pg_engine, instances):
    """The old lock order (items, then the run) against WhaleFall's cancel: PostgreSQL has to kill one."""
    center = RunCenter(pg_engine)
    deadlocks = 0
    with slow_item_updates(pg_engine), racers(pg_engine) as engine:
        for iteration in range(6):  # each race deadlocks most of the time, not always (a busy machine)
            run_id = f"control-{iteration}"
            center.create_run(run_id, SPEC)
            center.snapshot_items(run_id)

            def items_then_run(run_id: str = run_id) -> None:
                with engine.begin() as connection:
                    connection.execute(
                        text("UPDATE task_run_items SET status = 'completed' WHERE run_id = :id"), {"id": run_id}
                    )
                    connection.execute(
                        text("UPDATE task_runs SET progress_completed = 4 WHERE run_id = :id"), {"id": run_id}
                    )

            def run_then_items(run_id: str = run_id) -> None:
                with engine.begin() as connection:
                    connection.execute(
                        text("UPDATE task_runs SET status = 'cancelled' WHERE run_id = :id"), {"id": run_id}
                    )
                    connection.execute(
                        text("UPDATE task_run_items SET status = 'cancelled' WHERE run_id = :id"), {"id": run_id}
                    )

            errors = _race(items_then_run, run_then_items)
            deadlocks += sum(isinstance(e, OperationalError) and "deadlock" in str(e) for e in errors)
    assert deadlocks >= 2  # the set-up reproduces the deadlock the run center must avoid


def _deadlocks(engine: Engine) -> int:
    """PostgreSQL's count of deadlocks in this database, complete for every session that has exited
    (see `racers`)."""
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar()


def test_a_deadlock_forced_by_a_foreign_writer_is_retried(pg_engine, instances):
    """Whoever PostgreSQL picks as the victim, the run center's own write lands: when it is ours,
    the whole transaction runs again."""
    before, foreign_victims = _deadlocks(pg_engine), 0
    with slow_item_updates(pg_engine), racers(pg_engine) as engine:
        center = RunCenter(engine)
        for iteration in range(3):
            run_id = f"retry-{iteration}"
            center.create_run(run_id, SPEC)
            center.snapshot_items(run_id)

            def foreign(run_id: str = run_id) -> None:  # another program, the wrong way round
                with engine.begin() as connection:
                    connection.execute(
                        text("UPDATE task_run_items SET error_message = 'x' WHERE run_id = :id"), {"id": run_id}
                    )
                    connection.execute(
                        text("UPDATE task_runs SET error_message = 'x' WHERE run_id = :id"), {"id": run_id}
                    )

            errors = _race(foreign, lambda run_id=run_id: settle(engine, run_id, Cancelled()))

            assert errors[1] is None, errors  # the run center's cancel never fails
            assert center.status(run_id) is TaskStatus.CANCELLED
            foreign_victims += errors[0] is not None
    ours_retried = _deadlocks(pg_engine) - before - foreign_victims
    assert ours_retried >= 1  # the run center was a deadlock's victim, and retried successfully
