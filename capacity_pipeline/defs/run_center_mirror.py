"""One run lifecycle for every aggregating Dagster step, mirrored into WhaleFall's run center.

* A step opens: it starts its watch (heartbeat, lock-wait reports, cancels during a statement),
  claims the TaskRuns its run works for (the API's triggers, or one it creates for itself), and
  snapshots their items.
* During the work, each batch records every instance's phase result into the items, and a run
  center cancel is seen after the batch (or at once by the watch). A run whose TaskRuns were all
  cancelled ends CANCELED in Dagster, never FAILURE; a TaskRun cancelled while others share the
  run just stops being written.
* The step's success / failure hooks settle the TaskRuns as the work ends: final within a second,
  with or without a daemon. What hooks cannot see (a terminated run, a dead worker, a cancelled
  queued run) the reconciler sensor settles (sensors.py).

Which TaskRun a run mirrors into follows from its tags and job (`task_of_run`): a trigger's
claim key, an explicit TaskRun id, the nightly job, or else a hand-made materialization.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from sqlalchemy import Engine

from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.aggregation.engine import (
    AggregationAborted,
    Batch,
    BatchControl,
    aggregate_windows,
)
from capacity_pipeline.domain.model import (
    IN_PROGRESS,
    ActiveInstance,
    AggregationReport,
    Level,
    Scope,
    TaskStatus,
    WindowPlan,
)
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.payloads import current_summary, nightly_summary, with_overall_status
from capacity_pipeline.domain.run_center.task_runs import ItemPhase, RunCenter, TaskRunSpec
from capacity_pipeline.domain.run_center.worker_watch import WorkerWatch
from capacity_pipeline.domain.storage.dialects import first_line

# Tags the pipeline reads and writes on Dagster runs.
CLAIM_TAG = "capacity/claim_key"  # set by the trigger sensor: the run claims that key's TaskRuns
TASK_RUN_TAG = "capacity/task_run_id"  # a TaskRun the run works for (the first one, for people)
TASK_KEY_TAG = "capacity/task_key"  # the run-center task this run is (else from the job)
TRIGGER_SOURCE_TAG = "capacity/trigger_source"  # "scheduled" for runs no person asked for
SCOPE_TAG = "capacity/scope"
CREATED_BY_TAG = "capacity/created_by"
REQUESTED_PERIOD_TAG = "capacity/requested_period_type"
SCHEDULE_TAG = "dagster/schedule_name"
MIRRORED_TASK_KEYS = (c.CURRENT_TASK_KEY, c.NIGHTLY_TASK_KEY, c.MATERIALIZE_TASK_KEY)
# The two jobs WhaleFall knows carry its task keys as their names (spec 6.2, 8).
CURRENT_JOB_NAME = c.CURRENT_TASK_KEY
NIGHTLY_JOB_NAME = c.NIGHTLY_TASK_KEY


class InstancesFailed(dg.Failure):
    """Some instances failed, each isolated and recorded in its item: the run center has it all."""


class RunCenterClosed(dg.Failure):
    """The run center closed this run's TaskRuns (another step failed it): nothing left to do."""


@dataclass(frozen=True)
class RunTask:
    """The run-center task a Dagster run is, as its tags and job say."""

    task_key: str
    task_name: str
    trigger_source: str
    created_by: int | None
    scope: Scope
    requested_period_type: str | None = None

    @property
    def is_nightly(self) -> bool:
        return self.task_key == c.NIGHTLY_TASK_KEY

    def spec(self, summary: dict[str, Any]) -> TaskRunSpec:
        result_url = c.NIGHTLY_RESULT_URL if self.is_nightly else c.CURRENT_RESULT_URL[self.scope.value]
        return TaskRunSpec(
            task_key=self.task_key,
            task_name=self.task_name,
            trigger_source=self.trigger_source,
            created_by=self.created_by,
            result_url=result_url,
            summary_json=summary,
        )


_TASK_NAMES = {
    c.CURRENT_TASK_KEY: c.CURRENT_TASK_NAME,
    c.NIGHTLY_TASK_KEY: c.NIGHTLY_TASK_NAME,
    c.MATERIALIZE_TASK_KEY: c.MATERIALIZE_TASK_NAME,
}


def levels_of(asset_keys: Iterable[dg.AssetKey]) -> set[Level]:
    """The aggregation levels among these assets (a run's: the assets its job executes)."""
    names = {key.to_user_string() for key in asset_keys}
    return {level for level in Level if any(name.endswith(f"_{level.table}") for name in names)}


def task_of_run(run: dg.DagsterRun, asset_keys: Iterable[dg.AssetKey] = ()) -> RunTask:
    """The task a run is: its TASK_KEY_TAG, else its job's (the jobs are named for their task keys),
    else a materialization made by hand (or by automation). `asset_keys`: the assets the run
    executes, which give its scope when no tag does."""
    job_task = run.job_name if run.job_name in (CURRENT_JOB_NAME, NIGHTLY_JOB_NAME) else c.MATERIALIZE_TASK_KEY
    task_key = run.tags.get(TASK_KEY_TAG) or job_task
    scheduled = SCHEDULE_TAG in run.tags or run.tags.get(TRIGGER_SOURCE_TAG) == c.TRIGGER_SCHEDULED
    tagged_scope = run.tags.get(SCOPE_TAG)
    scope = Scope(tagged_scope) if tagged_scope in set(Scope) else Scope.of_levels(levels_of(asset_keys) or set(Level))
    created_by = run.tags.get(CREATED_BY_TAG, "")
    return RunTask(
        task_key=task_key,
        task_name=_TASK_NAMES.get(task_key, c.MATERIALIZE_TASK_NAME),
        trigger_source=c.TRIGGER_SCHEDULED if scheduled else c.TRIGGER_MANUAL,
        created_by=None if scheduled or not created_by.lstrip("-").isdigit() else int(created_by),
        scope=Scope.ALL if task_key == c.NIGHTLY_TASK_KEY else scope,
        requested_period_type=run.tags.get(REQUESTED_PERIOD_TAG),
    )


# The results one batch writes into the items: (instance, phase, result) for every instance.
PhaseResults = Callable[[Batch], list[ItemPhase]]


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
    ) -> None:
        self.context = context
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
            self.watch.tick()  # the first heartbeat of the claimed links, with the worker's pid and memory
            statuses = self.center.statuses(self.task_run_ids)
            self.open_ids = [run_id for run_id in self.task_run_ids if statuses.get(run_id) in IN_PROGRESS]
            if not self.open_ids:
                self._end_closed(statuses)
            snapshots = [self.center.snapshot_items(run_id, by_name=self.by_name) for run_id in self.open_ids]
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
        self, plans: Sequence[WindowPlan], results: PhaseResults, expected_phases: Sequence[str]
    ) -> list[AggregationReport]:
        """The engine over this run's instances, every batch mirrored into the items."""

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
                instances=self.instances,
                batch_size=self.whalefall.batch_size,
                before_batch=lambda batch: self.center.start_items(self.open_ids, [i.id for i in batch]),
                after_batch=after_batch,
                control=self.control,
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
            status = self.center.finalize_run(run_id)
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
            self.center.finalize_run(run_id)  # consistent counters and completed_at (spec Q14)
        self.context.log.warning(reason)
        self.context.instance.report_run_canceling(self.run, message=reason)
        raise DagsterExecutionInterruptedError(reason)

    # -- closing ----------------------------------------------------------------------------------

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        self.watch.__exit__()
        if isinstance(error, DagsterExecutionInterruptedError | KeyboardInterrupt) and not self._cancelling:
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
                self.center.cancel_run(run_id)
                self.center.finalize_run(run_id)
            self.context.log.warning(f"Terminated from Dagster: TaskRun(s) {taskruns} cancelled in the run center")
            return
        reason = "the run's worker was interrupted without a termination request (its code server or machine stopped)"
        for run_id in self.open_ids:
            self.center.mark_run_failed(run_id, f"Dagster run {self.run.run_id} failed: {reason}")
        self.context.log.error(f"Interrupted: TaskRun(s) {taskruns} failed in the run center: {reason}")


# -- hooks: the normal way a run's TaskRuns become final ---------------------------------------


def final_summary(task_key: str) -> Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]] | None:
    """How finalize fills a TaskRun's summary: the current-period status from its items (spec 6.2);
    the nightly run wrote its own final summary already."""
    if task_key == c.NIGHTLY_TASK_KEY:
        return None
    return lambda stored, items: (
        with_overall_status(stored, items) if "period_start" in stored["ext"]["data"] else stored
    )


def settle(engine: Engine, run_id: str, *, failure: str | None = None) -> dict[str, TaskStatus | None]:
    """Settle the TaskRuns of a Dagster run after one of its steps: failed with `failure`, or final
    once every item is (a run without instances at once: there is nothing left to wait for)."""
    center, settled = RunCenter(engine), {}
    for task_run_id in RunClaims(engine).task_runs_of(run_id):
        run = center.get_run(task_run_id)
        if run is None or run["status"] not in IN_PROGRESS:
            continue
        if failure is not None:
            center.mark_run_failed(task_run_id, failure)
        elif center.items_settled(task_run_id):
            center.finalize_run(task_run_id, final_summary(run["task_key"]))
        settled[task_run_id] = center.status(task_run_id)
    return settled


def _failure_message(error: BaseException | None) -> str:
    """The first line of why a step failed (a Failure's description, else the error itself)."""
    if error is None:
        return "the step failed"
    description = getattr(error, "description", None)
    return first_line(RuntimeError(description)) if description else first_line(error)


@dg.success_hook(name="settle_run_center", required_resource_keys={"whalefall"})
def settle_run_center(context: dg.HookContext) -> None:
    """The step succeeded: its run's TaskRuns become final once all their items are."""
    settled = settle(context.resources.whalefall.engine(), context.run_id)
    for task_run_id, status in settled.items():
        context.log.info(f"Run center: TaskRun {task_run_id} is {status.value if status else 'gone'}")


@dg.failure_hook(name="fail_run_center", required_resource_keys={"whalefall"})
def fail_run_center(context: dg.HookContext) -> None:
    """The step failed. Failed instances are in the items already (the run ends failed once they are
    all settled); any other failure fails the TaskRuns and their open items with its reason."""
    error = context.op_exception
    settled_already = isinstance(error, InstancesFailed | RunCenterClosed)
    failure = None if settled_already else _failure_message(error)
    settled = settle(context.resources.whalefall.engine(), context.run_id, failure=failure)
    for task_run_id, status in settled.items():
        context.log.info(f"Run center: TaskRun {task_run_id} is {status.value if status else 'gone'}")


RUN_CENTER_HOOKS = {settle_run_center, fail_run_center}


def nightly_initial_summary(whalefall: WhaleFallDatabase, run_id: str) -> dict[str, Any]:
    return nightly_summary(extra=whalefall.run_url(run_id))


def current_initial_summary(task: RunTask) -> dict[str, Any]:
    return current_summary(task.task_key, task.scope)
