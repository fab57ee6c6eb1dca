"""A worker's companion thread: heartbeats, lock waits reported while they last, and cancels that
arrive while a statement runs.

Every `interval` seconds it (1) beats on the run's links, so a reconciler can tell a dead worker
from a slow one; (2) looks at the batch statement in progress and, when it waits on a lock, says
for what and held by whom; (3) reads the run's TaskRuns and, once none of them is open any more
(cancelled in the run center), stops the engine, which cancels the statement on the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection

from sqlalchemy import Engine

from capacity_pipeline.domain.aggregation.engine import BatchControl
from capacity_pipeline.domain.model import IN_PROGRESS
from capacity_pipeline.domain.run_center.claims import RunClaims, WorkerStats
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.storage.dialects import dialect_of, first_line

WAIT_REPORT_AFTER_SECONDS = 2.0  # a statement busy this long is looked at for lock waits


class WorkerWatch:
    """Runs beside one worker (a Dagster step) for as long as the `with` block lasts."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        control: BatchControl,
        *,
        interval: float,
        report: Callable[[str], None],
        warn: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.run_id = run_id
        self.control = control
        self.interval = interval
        self.report = report  # a lock wait, in words
        self.warn = warn  # the watch itself failed (once per kind of failure)
        self.task_run_ids: Collection[str] = ()  # set once the worker has claimed its TaskRuns
        self._claims = RunClaims(engine)
        self._center = RunCenter(engine)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"capacity-watch-{run_id[:8]}", daemon=True)
        self._warned: set[str] = set()

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=self.interval + 5)

    def _loop(self) -> None:
        while True:
            self.tick()
            if self._stopping.wait(self.interval):
                return

    def tick(self) -> None:
        """One round: beat, report a lock wait, act on a cancel. Errors are warned once, not raised."""
        for name, step in (("heartbeat", self._beat), ("lock watch", self._watch_wait), ("cancel watch", self._cancel)):
            try:
                step()
            except Exception as error:  # noqa: BLE001 - the watch must outlive a flaky database
                if name not in self._warned:
                    self._warned.add(name)
                    self.warn(f"{name} failed: {first_line(error)}")

    def _beat(self) -> None:
        self._claims.beat(self.run_id, WorkerStats.of_this_process())

    def _watch_wait(self) -> None:
        busy = self.control.busy_session()
        if busy is None or busy[1] < WAIT_REPORT_AFTER_SECONDS:
            return
        with self.engine.connect() as connection:
            waiting = dialect_of(self.engine).describe_wait(connection, busy[0])
        if waiting:
            self.control.last_wait = waiting
            self.report(waiting)

    def _cancel(self) -> None:
        if not self.task_run_ids or self.control.stop_reason is not None:
            return
        statuses = self._center.statuses(self.task_run_ids)
        if statuses and not any(status in IN_PROGRESS for status in statuses.values()):
            self.control.stop("every TaskRun of this run was cancelled in the run center")
