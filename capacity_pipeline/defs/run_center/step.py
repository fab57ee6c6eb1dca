"""One run lifecycle for every aggregating Dagster step, mirrored into WhaleFall's run center.

* A step opens: it starts its watch (heartbeat, lock-wait reports, cancels during a statement),
  claims the TaskRuns its run works for (the API's triggers, or one it creates for itself), and
  snapshots their items.
* During the work, each batch records every instance's phase result into the items, and a run
  center cancel is seen after the batch (or at once by the watch). A run whose TaskRuns were all
  cancelled ends CANCELED in Dagster, never FAILURE; a TaskRun cancelled while others share the
  run just stops being written.
* The step's success / failure hooks (hooks.py) settle the TaskRuns as the work ends: final
  within a second, with or without a daemon. What hooks cannot see (a terminated run, a dead
  worker, a cancelled queued run) the reconciler sensor settles (reconciler.py). Every one of
  them ends a TaskRun through the run center's one rule (domain/run_center/settle.py).

Which TaskRuns a run mirrors into follows from its tags and job (tags.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import dagster as dg

from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.tags import CLAIM_TAG, TASK_RUN_IDS_TAG, TASK_RUN_TAG, RunTask
from capacity_pipeline.domain.aggregation.engine import AggregationAborted, Batch, BatchControl, aggregate_windows
from capacity_pipeline.domain.model import (
    IN_PROGRESS,
    ActiveInstance,
    AggregationReport,
    InstanceOutcome,
    TaskStatus,
    WindowPlan,
)
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.settle import Cancelled, CancelledIn, Interrupted, settle
from capacity_pipeline.domain.run_center.task_runs import ItemPhase, RunCenter
from capacity_pipeline.domain.run_center.worker_watch import WorkerWatch
from capacity_pipeline.domain.samples.changes import last_change


class InstancesFailed(dg.Failure):
    """Some instances failed, each isolated and recorded in its item: the run center has it all."""


class RunCenterClosed(dg.Failure):
    """The run center closed this run's TaskRuns (another step failed it): nothing left to do."""


# The results one batch writes into the items: (instance, phase, result) for every instance.
PhaseResults = Callable[[Batch], list[ItemPhase]]


def untouched(instance: ActiveInstance, plan: WindowPlan) -> InstanceOutcome:
    """An instance a refresh leaves as it is at the plan's levels: nothing read, nothing written."""
    return InstanceOutcome(
        instance, rows_written=dict.fromkeys(plan.levels, 0), records_read=dict.fromkeys(plan.levels, 0)
    )


class RunCenterStep:
    """An aggregating step as the run center sees it; use as a context manager around the work."""

    def __init__(
        self,
        context: dg.OpExecutionContext,
        whalefall: WhaleFallDatabase,
        task: RunTask,
        *,
        initial_summary: Callable[[], dict[str, Any]],
        by_name: bool = False,
        only: frozenset[int] | None = None,
    ) -> None:
        self.context = context
        self.only = only  # a refresh of what changed: these instances only
        self.whalefall = whalefall
        self.task = task
        self.initial_summary = initial_summary
        self.by_name = by_name
        self.run = context.run
        self.engine = whalefall.connected_engine()
        self.center = RunCenter(self.engine)
        self.claims = RunClaims(self.engine)
        self.control = BatchControl()
        self.watch = WorkerWatch(
            self.engine,
            self.run.run_id,
            self.control,
            interval=whalefall.heartbeat_seconds,
            report=lambda waiting: context.log.warning(f"Still working, {waiting}"),
            warn=lambda problem: context.log.warning(f"Run-center watch: {problem}"),
        )
        self.task_run_ids: list[str] = []
        self.open_ids: list[str] = []
        self.instances: list[ActiveInstance] = []
        self._cancelling = False

    # -- opening ----------------------------------------------------------------------------------

    def __enter__(self) -> RunCenterStep:
        self.watch.__enter__()
        try:
            self.task_run_ids = self._claim()
            self.watch.task_run_ids = self.task_run_ids
            # Every TaskRun the run serves, for people (the first one alone may have been cancelled).
            self.context.instance.add_run_tags(self.run.run_id, {TASK_RUN_IDS_TAG: " ".join(self.task_run_ids)})
            self.watch.tick()  # the first heartbeat of the claimed links, with the worker's pid and memory
            statuses = self.center.statuses(self.task_run_ids)
            self.open_ids = [run_id for run_id in self.task_run_ids if statuses.get(run_id) in IN_PROGRESS]
            for run_id in set(self.task_run_ids) - set(self.open_ids):
                # Closed between two steps (WhaleFall's cancel leaves its counters): made consistent.
                settle(self.engine, run_id, Cancelled())
            if not self.open_ids:
                self._end_closed(statuses)
            snapshots = [
                self.center.snapshot_items(run_id, by_name=self.by_name, only=self.only) for run_id in self.open_ids
            ]
            order = (lambda i: (i.name, i.id)) if self.by_name else (lambda i: i.id)
            self.instances = sorted({instance for snapshot in snapshots for instance in snapshot}, key=order)
            self.context.log.info(
                f"Run center: TaskRun(s) {', '.join(self.open_ids)}, {len(self.instances)} instance(s)"
            )
        except BaseException:
            self.watch.__exit__()
            raise
        return self

    def _claim(self) -> list[str]:
        """The TaskRuns this run works for, claimed (or created) now."""
        run_id = self.run.run_id
        claim_key = self.run.tags.get(CLAIM_TAG)
        if claim_key:
            claimed = self.claims.claim(claim_key, run_id)
            if claimed:
                return claimed
        tagged = self.run.tags.get(TASK_RUN_TAG)
        if tagged and not claim_key and self.center.status(tagged) is not None and self.claims.adopt(tagged, run_id):
            return [tagged]
        # A run of its own (or a re-execution, whose inherited TaskRun another run did).
        self.center.create_run(run_id, self.task.spec(self.initial_summary()))
        self.claims.adopt(run_id, run_id)
        return [run_id]

    def _end_closed(self, statuses: dict[str, TaskStatus]) -> None:
        """Every TaskRun of the run was closed before this step began. Completed ones (a run without
        instances, settled by an earlier step) let the step go on; cancelled and failed ones end it."""
        if statuses and all(status is TaskStatus.COMPLETED for status in statuses.values()):
            return
        if statuses and all(status is TaskStatus.CANCELLED for status in statuses.values()):
            self.cancel_dagster_run("every TaskRun of this run was cancelled in the run center before it started")
        raise RunCenterClosed(
            description="Not run: the run center already closed "
            + ", ".join(f"TaskRun {run_id} ({status.value})" for run_id, status in statuses.items())
        )

    def write_summaries(self, summary: Callable[[str], dict[str, Any]]) -> None:
        """The summary each open TaskRun shows while the run works (per TaskRun: it may carry inputs)."""
        for run_id in self.open_ids:
            self.center.write_summary(run_id, summary(run_id))

    # -- working ----------------------------------------------------------------------------------

    def aggregate(
        self,
        plans: Sequence[WindowPlan],
        results: PhaseResults,
        expected_phases: Sequence[str],
        *,
        changes_through: int | None = None,
        only: frozenset[int] | None = None,
    ) -> list[AggregationReport]:
        """The engine over this run's instances (those in `only`, when given: the others' samples
        did not change at this level, so they are recorded as having nothing to re-aggregate),
        every batch mirrored into the items.

        The windows are marked as following the sample changes up to `changes_through` (a refresh
        says how far its instances cover them; a whole-scope run covers every change logged before
        its work began)."""
        if changes_through is None:
            changes_through = last_change(self.engine)
        instances = self.instances
        if only is not None:
            instances = [instance for instance in self.instances if instance.id in only]
            unchanged = [instance for instance in self.instances if instance.id not in only]
            if unchanged:
                self.center.start_items(self.open_ids, [i.id for i in unchanged])
                nothing = Batch(0, 0, unchanged, {plan: [untouched(i, plan) for i in unchanged] for plan in plans})
                self.center.record_phases(self.open_ids, results(nothing), expected_phases)

        def after_batch(batch: Batch) -> bool:
            progress = self.center.record_phases(self.open_ids, results(batch), expected_phases)
            label = ", ".join(sorted({f"{plan.period.value} {plan.window}" for plan in plans}))
            counts = "; ".join(
                f"TaskRun {run_id}: {p.completed} completed, {p.failed} failed of {p.total}"
                for run_id, p in progress.items()
            )
            self.context.log.info(f"{label}: batch {batch.number}/{batch.total} written; {counts or 'no open TaskRun'}")
            self._drop_closed(set(progress))
            if self.whalefall.batch_pause_seconds and self.open_ids:
                time.sleep(self.whalefall.batch_pause_seconds)
                self._drop_closed(set(self._still_open()))  # a cancel that came during the pause
            return bool(self.open_ids)

        try:
            reports = aggregate_windows(
                self.engine,
                plans,
                instances=instances,
                batch_size=self.whalefall.batch_size,
                before_batch=lambda batch: self.center.start_items(self.open_ids, [i.id for i in batch]),
                after_batch=after_batch,
                control=self.control,
                reconnect_within=self.whalefall.statement_timeout_seconds,  # a restart of the server is survived
                changes_through=changes_through,
            )
        except AggregationAborted as error:
            raise dg.Failure(description=f"The WhaleFall database refused the work: {error}") from None
        if any(report.stopped for report in reports):
            self._drop_closed(set(self._still_open()))
            self._stopped()
        return reports

    def _still_open(self) -> list[str]:
        statuses = self.center.statuses(self.open_ids)
        return [run_id for run_id in self.open_ids if statuses.get(run_id) in IN_PROGRESS]

    def _drop_closed(self, still_open: set[str]) -> None:
        """TaskRuns closed in the run center (cancelled) get consistent counters and are no longer written."""
        for run_id in [run_id for run_id in self.open_ids if run_id not in still_open]:
            status = settle(self.engine, run_id, Cancelled()).status  # closed already: made consistent
            who = self._cancelled_by(run_id) if status is TaskStatus.CANCELLED else ""
            self.context.log.warning(
                f"TaskRun {run_id} was {status.value if status else 'removed'}{who}: not written any more"
            )
            self.open_ids.remove(run_id)

    def _cancelled_by(self, run_id: str) -> str:
        run = self.center.get_run(run_id) or {}
        user = ((run.get("summary_json") or {}).get("ext") or {}).get("data", {}).get("cancelled_by")
        return f" in the run center by user {user}" if user is not None else " in WhaleFall's run center"

    def _stopped(self) -> None:
        """The work stopped before its end: the run center closed every TaskRun of this run."""
        statuses = self.center.statuses(self.task_run_ids)
        if all(status is TaskStatus.CANCELLED for status in statuses.values()):
            reasons = "; ".join(f"TaskRun {run_id} cancelled{self._cancelled_by(run_id)}" for run_id in statuses)
            self.cancel_dagster_run(f"Cancelled from the run center: {reasons}")
        raise RunCenterClosed(
            description="Stopped: the run center closed "
            + ", ".join(f"TaskRun {run_id} ({status.value})" for run_id, status in statuses.items())
        )

    def cancel_dagster_run(self, reason: str) -> None:
        """End the Dagster run CANCELED: Dagster treats an interrupt of a CANCELING run as a cancel."""
        self._cancelling = True
        for run_id in self.task_run_ids:
            settle(self.engine, run_id, Cancelled())  # cancelled already: consistent counters (compat Q14)
        self.context.log.warning(reason)
        self.context.instance.report_run_canceling(self.run, message=reason)
        raise dg.DagsterExecutionInterruptedError(reason)

    # -- closing ----------------------------------------------------------------------------------

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        self.watch.__exit__()
        if isinstance(error, dg.DagsterExecutionInterruptedError | KeyboardInterrupt) and not self._cancelling:
            self._interrupted()

    def _interrupted(self) -> None:
        """The worker was interrupted. Dagster ends the run CANCELED when someone asked for it (UI,
        GraphQL: the run is CANCELING) and FAILURE otherwise (its code server or machine stopping);
        the TaskRuns end the same way, with consistent counters."""
        run = self.context.instance.get_run_by_id(self.run.run_id)
        requested = run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)
        taskruns = ", ".join(self.open_ids) or "-"
        if requested:
            for run_id in self.open_ids:
                settle(self.engine, run_id, Cancelled(where=CancelledIn.DAGSTER))
            self.context.log.warning(f"Terminated from Dagster: TaskRun(s) {taskruns} cancelled in the run center")
            return
        reason = "the run's worker was interrupted without a termination request (its code server or machine stopped)"
        for run_id in self.open_ids:
            settle(self.engine, run_id, Interrupted(f"Dagster run {self.run.run_id} failed: {reason}"))
        self.context.log.error(f"Interrupted: TaskRun(s) {taskruns} failed in the run center: {reason}")
