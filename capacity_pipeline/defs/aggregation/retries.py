"""A failed automated re-aggregation is run again, later and later, a bounded number of times.

`capacity_automation` counts a change as handled once it has requested its run, whether that run
succeeds or not: a run that failed on a lock timeout or a database restart would leave its window
stale until the next change or the nightly run. Dagster's own run retries (dagster.yaml
`run_retries`) re-execute at once, with no backoff, so `capacity_refresh_retries` does it instead.

Each tick it looks at the automated runs (tag capacity/refresh=changed) that failed in the last
day. A failed run whose assets were not materialized since for its partition (by itself before it
failed, or by any run after) is requested again, the same assets and partition with the
automation's tags, once its backoff has passed: CAPACITY_REFRESH_RETRY_SECONDS x 2^attempt after
it ended (attempt 0 for the automation's own run, capacity/refresh_attempt on a retry), up to
CAPACITY_REFRESH_RETRIES retries. Its run key is the failed run's id, so it is requested once. A
retry is just another automated run: a scheduled capacity_materialize TaskRun in the run center;
the failed run and its TaskRun stay failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from capacity_pipeline.defs.aggregation.automation import automation_run_tags
from capacity_pipeline.defs.run_center.tags import (
    FINISHED,
    REFRESH_ATTEMPT_TAG,
    REFRESH_CHANGED,
    REFRESH_TAG,
    RETRY_OF_TAG,
)
from capacity_pipeline.settings import Settings

SENSOR_NAME = "capacity_refresh_retries"
PARTITION_TAG = "dagster/partition"
LOOKBACK = timedelta(days=1)  # failed runs older than this are left alone
MAX_CANDIDATES = 200  # failed automated runs looked at per tick, newest first


def attempt_of(run: dg.DagsterRun) -> int:
    """Which attempt a run is: 0 for the automation's own run, n for its n-th retry."""
    raw = run.tags.get(REFRESH_ATTEMPT_TAG, "0")
    return int(raw) if raw.isdigit() else 0


def backoff_seconds(base_seconds: float, attempt: int) -> float:
    """How long after attempt `attempt` failed its retry waits: twice as long for each attempt."""
    return base_seconds * 2**attempt


def retry_run_key(failed_run_id: str) -> str:
    return f"retry-of-{failed_run_id}"


@dataclass
class RetryPlan:
    """What one tick does: the runs it requests, and a line for each failed run it retried, left
    waiting or gave up on (`gave_up_now`: newly, to log once; `gave_up`: all, for the cursor)."""

    requests: list[dg.RunRequest] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    gave_up_now: list[str] = field(default_factory=list)
    gave_up: set[str] = field(default_factory=set)

    def summary(self) -> str:
        parts = [
            f"{label}: {'; '.join(lines)}"
            for label, lines in (("retried", self.retried), ("waiting", self.waiting), ("gave up", self.gave_up_now))
            if lines
        ]
        earlier = len(self.gave_up) - len(self.gave_up_now)
        if earlier:
            parts.append(f"{earlier} failed run(s) given up on earlier")
        return " | ".join(parts) if parts else "no failed automated run to retry"


def _describe(run: dg.DagsterRun, keys: Sequence[dg.AssetKey], partition: str) -> str:
    names = ", ".join(sorted(key.to_user_string() for key in keys))
    return f"run {run.run_id} ({names}, partition {partition})"


def _materialized(instance: dg.DagsterInstance, run: dg.DagsterRun, partition: str, since: float) -> set[dg.AssetKey]:
    """The run's assets that are fresh for its partition: written by the run itself before it
    failed, or by any run after it ended."""
    own = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    done = {record.asset_key for record in own if record.partition_key == partition and record.asset_key is not None}
    for key in set(run.asset_selection or ()) - done:
        later = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition], after_timestamp=since), limit=1
        ).records
        if later:
            done.add(key)
    return done


def plan_retries(
    instance: dg.DagsterInstance,
    *,
    now: float,
    retries: int,
    base_seconds: float,
    reported: AbstractSet[str] = frozenset(),
) -> RetryPlan:
    """Which failed automated runs to request again now (see the module's docstring). `reported`:
    the runs already logged as given up, which are not logged again."""
    plan = RetryPlan()
    since = datetime.fromtimestamp(now, UTC) - LOOKBACK
    failed = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE], tags={REFRESH_TAG: REFRESH_CHANGED}, updated_after=since
        ),
        limit=MAX_CANDIDATES,
        order_by="update_timestamp",
    )
    if not failed:
        return plan
    ids = [record.dagster_run.run_id for record in failed]
    retried = {run.tags[RETRY_OF_TAG] for run in instance.get_runs(filters=dg.RunsFilter(tags={RETRY_OF_TAG: ids}))}
    partitions = sorted({p for record in failed if (p := record.dagster_run.tags.get(PARTITION_TAG))})
    unfinished = [status for status in dg.DagsterRunStatus if status not in FINISHED]
    in_flight = instance.get_runs(filters=dg.RunsFilter(statuses=unfinished, tags={PARTITION_TAG: partitions}))
    covered: set[tuple[dg.AssetKey, str]] = set()  # by a newer failed run, whose retry writes them
    for record in failed:  # the most recently failed first
        run = record.dagster_run
        partition = run.tags.get(PARTITION_TAG)
        if not run.asset_selection or partition is None or run.run_id in retried:
            continue
        ended = record.end_time or record.update_timestamp.timestamp()
        left = sorted(
            set(run.asset_selection)
            - _materialized(instance, run, partition, ended)
            - {key for key, p in covered if p == partition},
            key=lambda key: key.to_user_string(),
        )
        if not left:
            continue
        covered |= {(key, partition) for key in left}
        what = _describe(run, left, partition)
        busy = [
            other.run_id
            for other in in_flight
            if other.tags.get(PARTITION_TAG) == partition and set(other.asset_selection or ()) & set(left)
        ]
        attempt = attempt_of(run)
        if attempt >= retries:
            plan.gave_up.add(run.run_id)
            if run.run_id not in reported:
                plan.gave_up_now.append(f"{what} failed {attempt + 1} time(s), no retry left")
            continue
        if busy:
            plan.waiting.append(f"{what}: run {busy[0]} is writing it now")
            continue
        due = ended + backoff_seconds(base_seconds, attempt)
        if now < due:
            plan.waiting.append(f"{what}: retry {attempt + 1} of {retries} in {due - now:.0f} s")
            continue
        checks = [check for check in run.asset_check_selection or () if check.asset_key in left]
        plan.requests.append(
            dg.RunRequest(
                run_key=retry_run_key(run.run_id),
                asset_selection=left,
                asset_check_keys=checks if run.asset_check_selection is not None else None,
                partition_key=partition,
                tags={**automation_run_tags(), REFRESH_ATTEMPT_TAG: str(attempt + 1), RETRY_OF_TAG: run.run_id},
            )
        )
        plan.retried.append(f"{what}: retry {attempt + 1} of {retries}")
    return plan


def build_retry_sensor(
    settings: Settings, target: dg.AssetSelection, *, clock: Callable[[], float] = time.time
) -> dg.SensorDefinition:
    """`capacity_refresh_retries`, on with the automation; `clock` gives the time (tests move it)."""

    @dg.sensor(
        name=SENSOR_NAME,
        # asset_selection, not target: its runs go through the implicit asset job, one partitions
        # definition per run (a target would be one job over every period's partitions: invalid).
        asset_selection=target,
        minimum_interval_seconds=settings.automation_sensor_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.automation else dg.DefaultSensorStatus.STOPPED,
        description="Runs a failed automated re-aggregation again, waiting twice as long after each "
        "failure (CAPACITY_REFRESH_RETRIES, CAPACITY_REFRESH_RETRY_SECONDS).",
    )
    def capacity_refresh_retries(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        reported = set(json.loads(context.cursor).get("gave_up", [])) if context.cursor else set()
        plan = plan_retries(
            context.instance,
            now=clock(),
            retries=settings.refresh_retries,
            base_seconds=settings.refresh_retry_seconds,
            reported=reported,
        )
        for line in plan.retried:
            context.log.info(f"Retrying {line}")
        for line in plan.gave_up_now:
            context.log.warning(f"Gave up on {line}")
        if plan.requests:  # the tick then shows its runs, not a message: the log says what waits
            for line in plan.waiting:
                context.log.info(f"Waiting: {line}")
        # Only the runs still in the look-back stay in the cursor: it stays small.
        cursor = json.dumps({"gave_up": sorted(plan.gave_up)})
        if plan.requests:
            return dg.SensorResult(run_requests=plan.requests, cursor=cursor)
        context.update_cursor(cursor)
        return dg.SkipReason(plan.summary())

    return capacity_refresh_retries
