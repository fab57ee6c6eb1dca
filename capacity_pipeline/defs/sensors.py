"""The code location's sensors: the trigger launcher and the run-center reconciler.

* `capacity_current_trigger` turns each trigger the API wrote (a running capacity_aggregate_current
  TaskRun, spec 6.2) into work: equal requests (scope, period, partition) that arrive while their
  run has not started share it; a run is requested once per claim key, which Dagster de-duplicates
  across restarts, cursor resets and a second daemon. A bad trigger fails alone, saying why; one
  no daemon picked up in time fails, saying so.
* `run_center_reconciler` is the safety net for what the steps' hooks cannot see: a run that
  ended without them (terminated, crashed), a run whose worker stopped heartbeating (failed in
  Dagster and in the run center, which frees its concurrency slot), and a queued run whose
  TaskRuns were all cancelled (cancelled before it starts).

A WhaleFall database that cannot be reached makes a tick log one line and skip, not a traceback,
and the next tries come less and less often (up to every 5 minutes) until it answers again.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
from sqlalchemy.exc import DBAPIError

from capacity_pipeline.defs.assets import AGGREGATION_ASSETS, asset_key
from capacity_pipeline.defs.partitions import PARTITIONS, key_for_window
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center_mirror import (
    CLAIM_TAG,
    CREATED_BY_TAG,
    MIRRORED_TASK_KEYS,
    REQUESTED_PERIOD_TAG,
    SCOPE_TAG,
    TASK_KEY_TAG,
    TASK_RUN_TAG,
    final_summary,
)
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import InvalidScope, Scope
from capacity_pipeline.domain.periods import PeriodType, china_today, current_window
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.run_center.triggers import read_trigger
from capacity_pipeline.domain.storage.dialects import first_line

TRIGGER_SENSOR_SECONDS = 2
RECONCILER_SECONDS = 5
_NOT_STARTED = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING}
_FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class DatabaseUnavailable(Exception):
    """The WhaleFall database could not be used during a tick; the message is one line."""


@contextmanager
def _database_errors() -> Iterator[None]:
    """One clear line instead of a traceback per tick when the WhaleFall database is down."""
    try:
        yield
    except dg.Failure as failure:
        raise DatabaseUnavailable(failure.description or "the WhaleFall database is unavailable") from None
    except DBAPIError as error:
        raise DatabaseUnavailable(f"the WhaleFall database is unavailable: {first_line(error)}") from None


BACKOFF_LIMIT_SECONDS = 300


def _guarded(
    context: dg.SensorEvaluationContext, interval: int, tick: Callable[[], dg.SensorResult | dg.SkipReason]
) -> dg.SensorResult | dg.SkipReason:
    """Run a tick; while the WhaleFall database is unavailable, log one line per tick and wait twice
    as long after each failure (up to 5 minutes) before trying again. The wait lives in the cursor."""
    state = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    if state.get("retry_at", 0) > now:
        return dg.SkipReason(f"{state['error']}; next try in {state['retry_at'] - now:.0f} s")
    try:
        with _database_errors():
            result = tick()
    except DatabaseUnavailable as error:
        failures = state.get("failures", 0) + 1
        wait = min(interval * 2**failures, BACKOFF_LIMIT_SECONDS)
        context.update_cursor(json.dumps({"failures": failures, "retry_at": now + wait, "error": str(error)}))
        context.log.warning(f"{error}; next try in {wait} s")
        return dg.SkipReason(f"{error}; next try in {wait} s")
    if state:
        context.update_cursor(None)
    return result


# -- the trigger launcher -------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestKey:
    """What makes two requests equal: scope, period and partition (they may share one run)."""

    scope: Scope
    period: PeriodType
    partition_key: str

    def __str__(self) -> str:
        return f"{self.scope.value}:{self.period.value}:{self.partition_key}"

    @classmethod
    def parse(cls, text: str) -> RequestKey:
        scope, period, partition_key = text.split(":", 2)
        return cls(Scope(scope), PeriodType(period), partition_key)


def _run_request(claim_key: str, key: RequestKey, first: dict) -> dg.RunRequest:
    """The run of a claim key, named for the first TaskRun it works for."""
    tags = {
        CLAIM_TAG: claim_key,
        TASK_RUN_TAG: first["run_id"],
        TASK_KEY_TAG: c.CURRENT_TASK_KEY,
        SCOPE_TAG: key.scope.value,
        REQUESTED_PERIOD_TAG: read_trigger(first).requested_period_type,
    }
    if first["created_by"] is not None:
        tags[CREATED_BY_TAG] = str(first["created_by"])
    return dg.RunRequest(
        run_key=claim_key,
        partition_key=key.partition_key,
        asset_selection=[asset_key(level, key.period) for level in key.scope.levels],
        tags=tags,
    )


def launch_triggers(
    context: dg.SensorEvaluationContext, whalefall: WhaleFallDatabase
) -> dg.SensorResult | dg.SkipReason:
    """One tick of the trigger launcher (see the module docstring)."""
    engine = whalefall.connected_engine()  # a clear line per tick while it is down
    claims, center = RunClaims(engine), RunCenter(engine)
    pickup = timedelta(seconds=whalefall.trigger_pickup_timeout_seconds)
    triggers = claims.unclaimed_triggers(c.CURRENT_TASK_KEY)
    expired = claims.expire_unclaimed(
        triggers,
        pickup,
        f"no Dagster daemon picked up this request within {pickup.total_seconds():.0f} s "
        "(is the capacity_current_trigger sensor running?)",
    )
    for run_id in sorted(expired):
        context.log.warning(f"TaskRun {run_id}: not picked up in time, failed")
    groups = claims.unclaimed_groups()
    dagster_runs = _runs_by_claim_key(context.instance, list(groups))
    alive = {key: group for key, group in groups.items() if _not_finished(dagster_runs.get(key))}
    joinable = {group["request_key"]: key for key, group in alive.items()}
    today, rejected = china_today(), 0
    first_triggers = {}  # the rows a new group's run is named after
    for trigger in triggers:
        run_id = trigger["run_id"]
        if run_id in expired:
            continue
        try:
            request = read_trigger(trigger)
            key = RequestKey(request.scope, request.period, key_for_window(current_window(request.period, today)))
            if not PARTITIONS[key.period].has_partition_key(key.partition_key):
                raise ValueError(f"the {key.period.value} partition {key.partition_key} does not exist yet")
        except InvalidScope as error:
            rejected += _reject(context, center, run_id, f"{error} (got {error.requested!r})")
            continue
        except ValueError as error:
            rejected += _reject(context, center, run_id, str(error))
            continue
        shared = joinable.get(str(key))
        if shared is not None and claims.link(run_id, shared, str(key)):
            alive[shared]["task_run_ids"].append(run_id)
            context.log.info(f"TaskRun {run_id} shares the run of {shared} (it has not started yet)")
            continue
        claim_key = f"{c.CURRENT_TASK_KEY}:{run_id}"
        if not claims.link(run_id, claim_key, str(key)):
            continue  # another launcher (a second evaluation) linked it first
        alive[claim_key] = {"request_key": str(key), "task_run_ids": [run_id]}
        joinable[str(key)] = claim_key
        first_triggers[run_id] = trigger
    # Every live group without a Dagster run is requested: a new one, or one whose request the
    # daemon did not turn into a run (it stopped mid-tick); the run key keeps it to one run.
    requests = []
    for claim_key, group in alive.items():
        if claim_key in dagster_runs:
            continue  # its run exists and will claim it
        first_id = group["task_run_ids"][0]
        first = first_triggers.get(first_id) or center.get_run(first_id)
        if first is not None:
            requests.append(_run_request(claim_key, RequestKey.parse(group["request_key"]), first))
    if not requests:
        return dg.SkipReason(f"rejected {rejected} trigger(s)" if rejected else "no trigger waiting")
    return dg.SensorResult(run_requests=requests)


def _not_finished(run: dg.DagsterRun | None) -> bool:
    return run is None or run.status not in _FINISHED


def _reject(context: dg.SensorEvaluationContext, center: RunCenter, run_id: str, reason: str) -> int:
    """A trigger no run can serve fails alone, saying why (visible in the run center and the log)."""
    center.mark_run_failed(run_id, f"trigger rejected: {reason}")
    context.log.warning(f"TaskRun {run_id}: trigger rejected: {reason}")
    return 1


def _runs_by_claim_key(instance: dg.DagsterInstance, claim_keys: list[str]) -> dict[str, dg.DagsterRun]:
    if not claim_keys:
        return {}
    runs = instance.get_runs(filters=dg.RunsFilter(tags={CLAIM_TAG: claim_keys}))
    return {run.tags[CLAIM_TAG]: run for run in runs}


@dg.sensor(
    name="capacity_current_trigger",
    asset_selection=dg.AssetSelection.assets(*AGGREGATION_ASSETS.values()),
    minimum_interval_seconds=TRIGGER_SENSOR_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches the current-period aggregation the API (or WhaleFall's route) asked for.",
)
def capacity_current_trigger(
    context: dg.SensorEvaluationContext, whalefall: WhaleFallDatabase
) -> dg.SensorResult | dg.SkipReason:
    return _guarded(context, TRIGGER_SENSOR_SECONDS, lambda: launch_triggers(context, whalefall))


# -- the reconciler ---------------------------------------------------------------------------------


_KILLED = re.compile(r"terminated by signal (\d+)|exit code -(\d+)")
_MEMORY_SHARE_OF_AN_OOM_KILL = 0.5  # a worker this far below the machine's memory was not its victim


def _failure_message(instance: dg.DagsterInstance, claims: RunClaims, run: dg.DagsterRun) -> str:
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
    center, claims, done = RunCenter(engine), RunClaims(engine), []
    now = datetime.now(UTC)
    # 1. Dead workers: a started run whose steps stopped heartbeating.
    started = [
        run
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        if _is_ours(run, location_name)
    ]
    beats = claims.last_beats([run.run_id for run in started])
    timeout = timedelta(seconds=whalefall.heartbeat_timeout_seconds)
    for run in started:
        # Only aggregation runs heartbeat: those that claimed TaskRuns, and a trigger's run that
        # may have died before it could (observation runs are not watched).
        last = beats.get(run.run_id)
        if last is None and CLAIM_TAG in run.tags:
            record = instance.get_run_record_by_id(run.run_id)
            last = datetime.fromtimestamp(record.start_time, UTC) if record and record.start_time else None
        if last is None or now - last <= timeout:
            continue
        message = (
            f"the run's worker stopped heartbeating at {last.isoformat(timespec='seconds')} "
            f"({(now - last).total_seconds():.0f} s ago, limit {timeout.total_seconds():.0f} s): its process, "
            "its code server or its machine went away"
        )
        instance.report_run_failed(run, message=f"Failed by the run-center reconciler: {message}")
        for task_run_id in claims.task_runs_of(run.run_id):
            center.mark_run_failed(task_run_id, f"Dagster run {run.run_id} failed: {message}")
        done.append(f"{run.run_id}: worker dead, run failed")
    # 2. Open TaskRuns whose Dagster run ended without settling them.
    open_runs = claims.open_task_runs(MIRRORED_TASK_KEYS)
    by_id = _runs_by_id(instance, [row["dagster_run_id"] for row in open_runs if row["dagster_run_id"]])
    by_claim = _runs_by_claim_key(
        instance, [row["claim_key"] for row in open_runs if row["claim_key"] and not row["dagster_run_id"]]
    )
    for task_run in open_runs:
        run = by_id.get(task_run["dagster_run_id"]) or by_claim.get(task_run["claim_key"])
        if run is None or run.status not in _FINISHED:
            continue
        task_run_id = task_run["run_id"]
        if run.status == dg.DagsterRunStatus.SUCCESS:
            status = center.finalize_run(task_run_id, final_summary(task_run["task_key"]))
            done.append(f"{task_run_id}: {status.value if status else 'gone'}")
        elif run.status == dg.DagsterRunStatus.CANCELED:
            center.cancel_run(task_run_id)
            center.finalize_run(task_run_id)
            done.append(f"{task_run_id}: cancelled")
        else:
            if center.items_settled(task_run_id) and center.get_items(task_run_id):
                center.finalize_run(task_run_id, final_summary(task_run["task_key"]))
            else:
                message = _failure_message(instance, claims, run)
                if center.mark_run_failed(task_run_id, message):
                    instance.report_engine_event(f"Run center: {message}", run)
            done.append(f"{task_run_id}: failed")
    # 3. Queued runs whose TaskRuns were all cancelled never start.
    cancelled = claims.cancelled_unclaimed(now - timedelta(days=1))
    for claim_key, run in _runs_by_claim_key(instance, list(cancelled)).items():
        if run.status in _NOT_STARTED and instance.run_coordinator.cancel_run(run.run_id):
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

    return _guarded(context, RECONCILER_SECONDS, tick)


SENSORS = [capacity_current_trigger, run_center_reconciler]
