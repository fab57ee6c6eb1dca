"""Mirroring Dagster runs into WhaleFall's run center (task_runs / task_run_items).

* A step that aggregates opens the run's TaskRun (creating it, or adopting one the API created
  ahead of time), snapshots the items once, and moves items and progress batch by batch. Between
  batches it sees a cancel made in the run center, stops, and has Dagster terminate the run.
* The `run_center_reconciler` sensor settles what a step cannot: a run that ended (finalize), a
  run that failed or whose worker died (mark failed), a run terminated in the Dagster UI
  (cancelled), and a TaskRun cancelled while its Dagster run is still queued (cancel the run).
  Every write is forward-only, so the order in which these arrive does not matter.

Matching both ways: a TaskRun's run_id is the Dagster run id, or the Dagster run carries the
TaskRun's run_id in the `capacity/task_run_id` tag; the summary records the Dagster run id and
its URL.
"""

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from sqlalchemy import Engine

from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.aggregation import (
    AggregationReport,
    Checkpoint,
    InstanceOutcome,
    Level,
    Scope,
)
from capacity_pipeline.domain.periods import PeriodType, Window
from capacity_pipeline.domain.runcenter import ItemOutcome, RunCenter, TaskRunSpec
from capacity_pipeline.domain.taskrun_payloads import (
    current_item_payload,
    current_summary,
    nightly_summary,
    overall_current_status,
    phase_status,
)

TASK_RUN_TAG = "capacity/task_run_id"
SCOPE_TAG = "capacity/scope"
CREATED_BY_TAG = "capacity/created_by"
PHASE_TAG = "capacity/phase/{level}"
SCHEDULE_TAG = "dagster/schedule_name"
WEBSERVER_URL_ENV = "DAGSTER_WEBSERVER_URL"
MIRRORED_TASK_KEYS = (c.CURRENT_TASK_KEY, c.NIGHTLY_TASK_KEY, c.MATERIALIZE_TASK_KEY)
TERMINATION_GRACE_SECONDS = 15


class CancelledFromRunCenter(dg.Failure):
    """The TaskRun was cancelled in the run center; raised if Dagster cannot terminate the run."""


def task_run_id_of(run: dg.DagsterRun) -> str:
    return run.tags.get(TASK_RUN_TAG, run.run_id)


def dagster_link(dagster_run_id: str) -> dict[str, str]:
    base = os.environ.get(WEBSERVER_URL_ENV, "http://127.0.0.1:3000").rstrip("/")
    return {"dagster_run_id": dagster_run_id, "dagster_run_url": f"{base}/runs/{dagster_run_id}"}


def scope_of_run(run: dg.DagsterRun, levels_in_run: set[Level]) -> str:
    """The API's scope tag if there is one, else what the run's asset selection covers."""
    tagged = run.tags.get(SCOPE_TAG)
    if tagged in {scope.value for scope in Scope}:
        return tagged
    return Scope.ALL.value if len(levels_in_run) != 1 else next(iter(levels_in_run)).value


def levels_of_run(run: dg.DagsterRun) -> set[Level]:
    """Aggregation levels the run materializes (all, when the run selects its whole job)."""
    if not run.asset_selection:
        return set(Level)
    names = {key.to_user_string() for key in run.asset_selection}
    return {level for level in Level if any(name.endswith(f"_{level.table}") for name in names)}


class StepMirror:
    """What one aggregating step of a Dagster run writes into the run center."""

    def __init__(self, context: dg.OpExecutionContext, engine: Engine, resource: WhaleFallDatabase) -> None:
        self.context = context
        self.center = RunCenter(engine)
        self.run = context.run
        self.task_run_id = task_run_id_of(self.run)
        if self.task_run_id != self.run.run_id and self.center.status(self.task_run_id) in (c.COMPLETED, c.FAILED):
            # A re-execution inherits the tag of a TaskRun that already finished: it gets its own.
            self.task_run_id = self.run.run_id
        self.pause = resource.batch_pause_seconds

    # -- opening ----------------------------------------------------------------------------

    def open_current(self, period: PeriodType, window: Window) -> list:
        """Open a capacity_aggregate_current or hand-made materialization run; its item snapshot."""
        scope = scope_of_run(self.run, levels_of_run(self.run))
        is_current_job = self.run.job_name == c.CURRENT_TASK_KEY
        task_key = c.CURRENT_TASK_KEY if is_current_job else c.MATERIALIZE_TASK_KEY
        spec = TaskRunSpec(
            task_key=task_key,
            task_name=c.CURRENT_TASK_NAME if is_current_job else c.MATERIALIZE_TASK_NAME,
            trigger_source=c.TRIGGER_MANUAL,
            created_by=_int_tag(self.run, CREATED_BY_TAG),
            result_url=c.CURRENT_RESULT_URL[scope],
            summary_json=current_summary(task_key, scope),
        )
        instances = self._open(spec)
        self.center.write_summary(
            self.task_run_id,
            current_summary(
                task_key,
                scope,
                period_type=period.value,
                window=window,
                extra=dagster_link(self.context.run.run_id),
            ),
        )
        return instances

    def open_nightly(self) -> list:
        scheduled = SCHEDULE_TAG in self.run.tags
        spec = TaskRunSpec(
            task_key=c.NIGHTLY_TASK_KEY,
            task_name=c.NIGHTLY_TASK_NAME,
            trigger_source=c.TRIGGER_SCHEDULED if scheduled else c.TRIGGER_MANUAL,
            created_by=None if scheduled else _int_tag(self.run, CREATED_BY_TAG),
            result_url=c.NIGHTLY_RESULT_URL,
            summary_json=nightly_summary(extra=dagster_link(self.context.run.run_id)),
        )
        return self._open(spec, by_name=True)

    def _open(self, spec: TaskRunSpec, *, by_name: bool = False) -> list:
        self.center.create_run(self.task_run_id, spec)
        if not self.center.start_run(self.task_run_id):
            # Cancelled (or finished) before this step started: it never runs.
            self.stop_for_cancel()
        return self.center.snapshot_items(self.task_run_id, by_name=by_name)

    # -- during the run -----------------------------------------------------------------------

    def before_batch(self, batch: Sequence) -> None:
        self.center.start_items(self.task_run_id, [instance.id for instance in batch])

    def current_checkpoint(self, level: Level, scope: str, period: PeriodType, window: Window) -> Checkpoint:
        """Per batch: each instance's item completed or failed as WhaleFall's runner would."""

        def checkpoint(report: AggregationReport, batch: Sequence[InstanceOutcome]) -> bool:
            outcomes = [
                ItemOutcome(o.instance.id, *current_item_payload(o, level, scope, period.value, window)) for o in batch
            ]
            label = f"{period.value} {level.value} {window}: batch {report.batches_done}/{report.batches_total}"
            return self.after_batch(outcomes, label)

        return checkpoint

    def after_batch(self, outcomes: Sequence[ItemOutcome], label: str) -> bool:
        """Record a batch's items; True to go on, False once the run center cancelled the run."""
        progress = self.center.record_outcomes(self.task_run_id, outcomes)
        self.context.log.info(
            f"{label}; run center: {progress.completed} completed, {progress.failed} failed of {progress.total}"
        )
        if self.pause:
            time.sleep(self.pause)
        return not self.center.is_cancelled(self.task_run_id)

    def finish_phase(self, level: Level, reports: Sequence[AggregationReport]) -> None:
        """Remember how a phase went (spec 6.2's overall status needs every phase)."""
        statuses = [phase_status(report.outcomes, level) for report in reports]
        worst = "failed" if "failed" in statuses else ("completed" if "completed" in statuses else "skipped")
        self.context.instance.add_run_tags(self.context.run.run_id, {PHASE_TAG.format(level=level.value): worst})

    def stop_for_cancel(self) -> None:
        """The run center cancelled the run: have Dagster terminate it (it then ends CANCELED)."""
        self.center.finalize_run(self.task_run_id)  # consistent counters, completed_at (spec Q14)
        self.context.log.warning(f"TaskRun {self.task_run_id} was cancelled in the run center; terminating")
        if self.context.instance.run_coordinator.cancel_run(self.context.run.run_id):
            time.sleep(TERMINATION_GRACE_SECONDS)  # the interrupt arrives while we wait
        raise CancelledFromRunCenter(description=f"TaskRun {self.task_run_id} was cancelled in the run center")

    def interrupted(self) -> None:
        """Dagster is terminating the run (UI or GraphQL): the TaskRun is cancelled."""
        self.center.cancel_run(self.task_run_id)
        self.center.finalize_run(self.task_run_id)

    def failed(self, error: BaseException) -> None:
        """An error outside the per-instance isolation (spec 6.1 mark_run_failed)."""
        self.center.mark_run_failed(self.task_run_id, str(error) or type(error).__name__)


@contextmanager
def mirrored(mirror: StepMirror) -> Iterator[None]:
    """Around a step body: interrupts and unexpected errors become run-center writes.

    A Failure (failed instances, a cancel from the run center) is already mirrored by the step.
    """
    try:
        yield
    except DagsterExecutionInterruptedError:
        mirror.interrupted()
        raise
    except dg.Failure:
        raise
    except Exception as error:
        mirror.failed(error)
        raise


def _int_tag(run: dg.DagsterRun, tag: str) -> int | None:
    value = run.tags.get(tag)
    return int(value) if value and value.lstrip("-").isdigit() else None


# -- reconciling with Dagster -------------------------------------------------------------------

_OPEN_DAGSTER = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
}


def find_dagster_run(instance: dg.DagsterInstance, task_run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(task_run_id)
    if run is not None:
        return run
    runs = instance.get_runs(filters=dg.RunsFilter(tags={TASK_RUN_TAG: task_run_id}), limit=1)
    return runs[0] if runs else None


def _failure_message(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """Why the run failed: a dead worker's explanation if there is one, else the run failure."""
    engine_events = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    crashes = [
        r.event_log_entry.message
        for r in engine_events
        if "process" in r.event_log_entry.message.lower()
        and ("exit" in r.event_log_entry.message.lower() or "signal" in r.event_log_entry.message.lower())
    ]
    failures = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    detail = crashes[-1] if crashes else (failures[-1].event_log_entry.message if failures else "the run failed")
    return f"Dagster run {run.run_id} failed: {detail}"


def final_summary(task_run: dict[str, Any], run: dg.DagsterRun) -> dict[str, Any] | None:
    """An asset run's stored summary with spec 6.2's overall status and message filled in.

    None for the nightly run (it writes its own) and for a run that never got its window.
    """
    summary = task_run.get("summary_json") or {}
    data = summary.get("ext", {}).get("data", {})
    if task_run["task_key"] == c.NIGHTLY_TASK_KEY or "period_start" not in data:
        return None
    phase_tags = [PHASE_TAG.format(level=level.value) for level in Level]
    status, message = overall_current_status([run.tags[tag] for tag in phase_tags if tag in run.tags])
    return {**summary, "ext": {**summary["ext"], "data": {**data, "status": status, "message": message}}}


def reconcile(instance: dg.DagsterInstance, center: RunCenter) -> list[str]:
    """Bring open TaskRuns in line with their Dagster runs; returns what was done, for the log."""
    done = []
    for task_run in center.runs_in_states(MIRRORED_TASK_KEYS, c.IN_PROGRESS):
        run = find_dagster_run(instance, task_run["run_id"])
        if run is None or run.status in _OPEN_DAGSTER:
            continue
        task_run_id = task_run["run_id"]
        if run.status == dg.DagsterRunStatus.SUCCESS:
            done.append(f"{task_run_id}: {center.finalize_run(task_run_id, final_summary(task_run, run))}")
        elif run.status == dg.DagsterRunStatus.CANCELED:
            center.cancel_run(task_run_id)
            center.finalize_run(task_run_id)
            done.append(f"{task_run_id}: cancelled")
        else:  # FAILURE (a failing step, or a dead worker that run monitoring caught)
            items = center.get_items(task_run_id)
            if not items or any(item["status"] in c.IN_PROGRESS for item in items):
                center.mark_run_failed(task_run_id, _failure_message(instance, run))
            else:  # every instance was settled: failed items make the run failed (spec 6.2)
                center.finalize_run(task_run_id, final_summary(task_run, run))
            done.append(f"{task_run_id}: failed")
    since = datetime.now(UTC) - timedelta(days=1)
    for task_run in center.runs_in_states(MIRRORED_TASK_KEYS, (c.CANCELLED,), updated_since=since):
        run = find_dagster_run(instance, task_run["run_id"])
        if run is not None and run.status in _OPEN_DAGSTER:
            # Queued: it never starts. Started: the step also sees the cancel between batches.
            instance.run_coordinator.cancel_run(run.run_id)
            done.append(f"{task_run['run_id']}: Dagster run {run.run_id} ({run.status.value}) cancelled")
    return done


@dg.sensor(
    name="run_center_reconciler",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps WhaleFall's run center (task_runs) in line with Dagster's runs.",
)
def run_center_reconciler(context: dg.SensorEvaluationContext, whalefall: WhaleFallDatabase) -> dg.SkipReason:
    actions = reconcile(context.instance, RunCenter(whalefall.engine()))
    for action in actions:
        context.log.info(action)
    return dg.SkipReason("; ".join(actions) if actions else "run center in line with Dagster")
