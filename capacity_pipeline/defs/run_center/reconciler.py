"""The run-center reconciler: the safety net for what the steps' hooks cannot see.

`run_center_reconciler` settles a run that ended without its hooks (terminated, crashed), fails a
run whose worker stopped heartbeating (in Dagster and in the run center, which frees its
concurrency slot), makes a closed TaskRun whose counters disagree with its items consistent
(WhaleFall's cancel, then a worker that died before it saw it), and cancels a queued run whose
TaskRuns were all cancelled before it starts. Every TaskRun it ends goes through the run center's
one rule (domain/run_center/settle.py).

A run that has left the queue (STARTING) is never terminated from here: Dagster would fail it
("Ignoring a duplicate run ..."), not cancel it. Its step sees the cancel when it claims its
TaskRuns and ends the run CANCELED itself.
"""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta

import dagster as dg

from capacity_pipeline.defs.backoff import guarded_tick
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.tags import CLAIM_TAG, FINISHED, MIRRORED_TASK_KEYS, runs_by_claim_key
from capacity_pipeline.domain.model import TaskStatus
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.settle import (
    Cancelled,
    CancelledIn,
    Failed,
    Succeeded,
    WorkerLost,
    inconsistent_task_runs,
    settle,
)
from capacity_pipeline.domain.run_center.task_runs import RunCenter

RECONCILER_SECONDS = 5
REPAIR_WINDOW = timedelta(days=2)  # closed TaskRuns started this recently are checked for consistency
QUEUED_CANCEL_MESSAGE = "Cancelled in the queue: every run-center request it was for was cancelled"


_KILLED = re.compile(r"terminated by signal (\d+)|exit code -(\d+)")
_MEMORY_SHARE_OF_AN_OOM_KILL = 0.5  # a worker this far below the machine's memory was not its victim


def dagster_run_failure_reason(instance: dg.DagsterInstance, claims: RunClaims, run: dg.DagsterRun) -> str:
    """Why the run failed, as precisely as we can tell: a worker killed by a signal says by which,
    and its last heartbeat says whether it was short of memory (Dagster's event guesses so for
    every SIGKILL); otherwise the run's own failure message."""
    engine_events = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    for record in reversed(engine_events):
        killed = _KILLED.search(record.event_log_entry.message or "")
        if killed:
            how = _killed(claims, run.run_id, int(killed.group(1) or killed.group(2)))
            return f"Dagster run {run.run_id} failed: {how}"
    failures = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    detail = failures[-1].event_log_entry.message if failures else "the run failed"
    return f"Dagster run {run.run_id} failed: {detail}"


def _killed(claims: RunClaims, run_id: str, number: int) -> str:
    try:
        name = f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        name = f"signal {number}"
    last = claims.last_worker(run_id)
    if last is None:
        return f"its worker process was killed by {name}"
    beat_at, worker = last
    used = f"{worker.memory_mib} MiB of the machine's {worker.machine_memory_mib} MiB"
    if worker.memory_mib < _MEMORY_SHARE_OF_AN_OOM_KILL * worker.machine_memory_mib:
        verdict = "not short of memory: something killed it (an operator, a supervisor, a restart)"
    else:
        verdict = "it may have run the machine out of memory"
    return (
        f"its worker process (pid {worker.pid}) was killed by {name}; at its last heartbeat "
        f"({beat_at.isoformat(timespec='seconds')}) it used {used}: {verdict}"
    )


def _is_ours(run: dg.DagsterRun, location_name: str | None) -> bool:
    origin = run.remote_job_origin
    if origin is None or location_name is None:
        return True
    return origin.location_name == location_name


def reconcile(
    instance: dg.DagsterInstance, whalefall: WhaleFallDatabase, *, location_name: str | None = None
) -> list[str]:
    """Bring the run center and Dagster in line; returns what was done, for the log."""
    engine = whalefall.connected_engine()  # a clear line per tick while it is down
    center, claims = RunCenter(engine), RunClaims(engine)
    now = claims.now()  # the clock the heartbeats were written with
    done = _fail_dead_workers(instance, whalefall, claims, now, location_name)
    done += _settle_ended_runs(instance, center, claims)
    for task_run_id in inconsistent_task_runs(engine, MIRRORED_TASK_KEYS, now - REPAIR_WINDOW):
        if settle(engine, task_run_id, Cancelled()).repaired:  # closed already: only made consistent
            done.append(f"{task_run_id}: counters and items made consistent")
    done += _cancel_queued(instance, claims, now)
    return done


def _fail_dead_workers(
    instance: dg.DagsterInstance,
    whalefall: WhaleFallDatabase,
    claims: RunClaims,
    now: datetime,
    location_name: str | None,
) -> list[str]:
    """A started run whose steps stopped heartbeating, and which wrote no event for as long, fails,
    in Dagster and in the run center."""
    started = [
        run
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        if _is_ours(run, location_name)
    ]
    beats = claims.last_beats([run.run_id for run in started])
    timeout = timedelta(seconds=whalefall.heartbeat_timeout_seconds)
    done = []
    for run in started:
        # Only aggregation runs heartbeat: those that claimed TaskRuns, and a trigger's run that
        # may have died before it could (observation runs are not watched).
        last, silent_for = beats.get(run.run_id), None
        if last is not None:
            silent_for = now - last
        elif CLAIM_TAG in run.tags:
            record = instance.get_run_record_by_id(run.run_id)
            if record and record.start_time:  # Dagster's own clock, against this host's
                last = datetime.fromtimestamp(record.start_time, UTC)
                silent_for = datetime.now(UTC) - last
        if silent_for is None or silent_for <= timeout or _recently_active(instance, run.run_id, timeout):
            continue
        current = instance.get_run_by_id(run.run_id)  # read again just before: it may be ending now
        if current is None or current.status != dg.DagsterRunStatus.STARTED:
            continue
        message = (
            f"the run's worker stopped heartbeating at {last.isoformat(timespec='seconds')} "
            f"({silent_for.total_seconds():.0f} s ago, limit {timeout.total_seconds():.0f} s): its process, "
            "its code server or its machine went away"
        )
        instance.report_run_failed(run, message=f"Failed by the run-center reconciler: {message}")
        for task_run_id in claims.task_runs_of(run.run_id):
            settle(claims.engine, task_run_id, WorkerLost(f"Dagster run {run.run_id} failed: {message}"))
        done.append(f"{run.run_id}: worker dead, run failed")
    return done


def _recently_active(instance: dg.DagsterInstance, run_id: str, timeout: timedelta) -> bool:
    """The run wrote an event within `timeout`: alive between two steps, or still starting up
    (the heartbeat beats only inside a step; a busy machine can take longer than the timeout to
    go from one step to the next)."""
    latest = instance.get_records_for_run(run_id, limit=1, ascending=False).records
    if not latest:
        return False
    age = datetime.now(UTC) - datetime.fromtimestamp(latest[0].timestamp, UTC)  # Dagster's clock and ours
    return age <= timeout


def _settle_ended_runs(instance: dg.DagsterInstance, center: RunCenter, claims: RunClaims) -> list[str]:
    """Open TaskRuns whose Dagster run ended without settling them end as it did."""
    open_runs = claims.open_task_runs(MIRRORED_TASK_KEYS)
    by_id = _runs_by_id(instance, [row["dagster_run_id"] for row in open_runs if row["dagster_run_id"]])
    by_claim = runs_by_claim_key(
        instance, [row["claim_key"] for row in open_runs if row["claim_key"] and not row["dagster_run_id"]]
    )
    done = []
    for task_run in open_runs:
        run = by_id.get(task_run["dagster_run_id"]) or by_claim.get(task_run["claim_key"])
        if run is None or run.status not in FINISHED:
            continue
        task_run_id = task_run["run_id"]
        if run.status == dg.DagsterRunStatus.SUCCESS:
            settled = settle(center.engine, task_run_id, Succeeded())
        elif run.status == dg.DagsterRunStatus.CANCELED:
            settled = settle(center.engine, task_run_id, Cancelled(where=CancelledIn.DAGSTER))
        elif _failed_per_instance(center, task_run_id):
            settled = settle(center.engine, task_run_id, Succeeded())  # the items say why, as the hook would
        else:
            message = dagster_run_failure_reason(instance, claims, run)
            settled = settle(center.engine, task_run_id, Failed(message))
            if settled.ended_now:
                instance.report_engine_event(f"Run center: {message}", run)
        done.append(f"{task_run_id}: {settled.status.value if settled.status else 'gone'}")
    return done


def _failed_per_instance(center: RunCenter, task_run_id: str) -> bool:
    """The run failed because instances failed, and every item is final: the hook's verdict."""
    items = center.get_items(task_run_id)
    statuses = {item["status"] for item in items}
    return TaskStatus.FAILED in statuses and not statuses & {TaskStatus.PENDING, TaskStatus.RUNNING}


def _cancel_queued(instance: dg.DagsterInstance, claims: RunClaims, now: datetime) -> list[str]:
    """A run still in the queue whose TaskRuns were all cancelled is cancelled before it starts.
    Only from the queue: once dequeued (STARTING) its step ends it CANCELED itself."""
    done = []
    cancelled = claims.cancelled_unclaimed(now - timedelta(days=1))
    for claim_key, run in runs_by_claim_key(instance, list(cancelled)).items():
        current = instance.get_run_by_id(run.run_id)  # read again just before: the queue moves on
        if current is not None and current.status == dg.DagsterRunStatus.QUEUED:
            # Straight to CANCELED, with no CANCELING a starting worker would fail the run on. If
            # the queue launched it meanwhile (dagster#3323), its worker finds the run cancelled and
            # does not execute, or its step sees the cancelled TaskRuns and ends it CANCELED.
            instance.report_run_canceled(current, message=QUEUED_CANCEL_MESSAGE)
            done.append(f"{claim_key}: queued Dagster run {run.run_id} cancelled")
    return done


def _runs_by_id(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, dg.DagsterRun]:
    if not run_ids:
        return {}
    return {run.run_id: run for run in instance.get_runs(filters=dg.RunsFilter(run_ids=run_ids))}


@dg.sensor(
    name="run_center_reconciler",
    minimum_interval_seconds=RECONCILER_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps WhaleFall's run center (task_runs) in line with Dagster's runs: the safety net "
    "for terminated runs, dead workers and cancelled queued runs.",
)
def run_center_reconciler(context: dg.SensorEvaluationContext, whalefall: WhaleFallDatabase) -> dg.SkipReason:
    location = getattr(getattr(context, "code_location_origin", None), "location_name", None)

    def tick() -> dg.SkipReason:
        actions = reconcile(context.instance, whalefall, location_name=location)
        for action in actions:
            context.log.info(action)
        return dg.SkipReason("; ".join(actions) if actions else "run center in line with Dagster")

    return guarded_tick(context, RECONCILER_SECONDS, tick)
