"""The trigger launcher: each request the API wrote becomes work (WhaleFall's manual trigger).

`capacity_current_trigger` turns each trigger (a running capacity_aggregate_current TaskRun, as
WhaleFall's start_run writes it) into a run of its scope's assets for the current window of its
period. Equal requests (scope, period, partition) that arrive while their run has not started
share it; a run is requested once per claim key, which Dagster de-duplicates across restarts,
cursor resets and a second daemon. A bad trigger fails alone, saying why; one no daemon picked up
in time fails, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from capacity_pipeline.defs.aggregation.assets import aggregation_selection, asset_key
from capacity_pipeline.defs.backoff import guarded_tick
from capacity_pipeline.defs.partitions import PartitionsByPeriod, key_for_window
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.run_center.tags import (
    CLAIM_TAG,
    CREATED_BY_TAG,
    FINISHED,
    REQUESTED_PERIOD_TAG,
    SCOPE_TAG,
    TASK_KEY_TAG,
    TASK_RUN_TAG,
    runs_by_claim_key,
)
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import InvalidScope, Scope
from capacity_pipeline.domain.periods import PeriodType, china_today, current_window
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.sensor_heartbeats import record_trigger_sensor_tick
from capacity_pipeline.domain.run_center.settle import Failed, settle
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.run_center.triggers import read_trigger

TRIGGER_SENSOR_SECONDS = 2


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
    context: dg.SensorEvaluationContext, whalefall: WhaleFallDatabase, partitions: PartitionsByPeriod
) -> dg.SensorResult | dg.SkipReason:
    """One tick of the trigger launcher (see the module docstring)."""
    engine = whalefall.connected_engine()  # a clear line per tick while it is down
    record_trigger_sensor_tick(engine, TRIGGER_SENSOR_SECONDS)  # the API's health: a daemon is ticking
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
    dagster_runs = runs_by_claim_key(context.instance, list(groups))
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
            if not partitions[key.period].has_partition_key(key.partition_key):
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
    return run is None or run.status not in FINISHED


def _reject(context: dg.SensorEvaluationContext, center: RunCenter, run_id: str, reason: str) -> int:
    """A trigger no run can serve fails alone, saying why (visible in the run center and the log)."""
    settle(center.engine, run_id, Failed(f"trigger rejected: {reason}"))
    context.log.warning(f"TaskRun {run_id}: trigger rejected: {reason}")
    return 1


def build_trigger_sensor(partitions: PartitionsByPeriod) -> dg.SensorDefinition:
    """The launcher over these partitions (a request for a period before the first one is rejected)."""

    @dg.sensor(
        name="capacity_current_trigger",
        asset_selection=aggregation_selection(),
        minimum_interval_seconds=TRIGGER_SENSOR_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches the current-period aggregation the API (or WhaleFall's route) asked for.",
    )
    def capacity_current_trigger(
        context: dg.SensorEvaluationContext, whalefall: WhaleFallDatabase
    ) -> dg.SensorResult | dg.SkipReason:
        return guarded_tick(context, TRIGGER_SENSOR_SECONDS, lambda: launch_triggers(context, whalefall, partitions))

    return capacity_current_trigger
