"""The trigger sensor: each pending capacity_aggregate_current TaskRun becomes one run.

Exactly once without a cursor to lose: a trigger is skipped once a Dagster run carries its
TaskRun id, and the run key (one per TaskRun) makes Dagster drop a repeated request, across
restarts, cursor resets and a second daemon. A bad trigger fails its own TaskRun with the reason
and the others still launch.
"""

import dagster as dg

from capacity_pipeline.defs.assets import asset_key
from capacity_pipeline.defs.jobs import capacity_aggregate_current_job
from capacity_pipeline.defs.partitions import PARTITIONS
from capacity_pipeline.defs.resources import WhaleFallDatabase
from capacity_pipeline.defs.runcenter import CREATED_BY_TAG, SCOPE_TAG, TASK_RUN_TAG, find_dagster_run
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.aggregation import Scope
from capacity_pipeline.domain.periods import PeriodType, china_today
from capacity_pipeline.domain.runcenter import RunCenter
from capacity_pipeline.domain.triggers import InvalidScope, scope_of_trigger


def _selection(scope: str) -> list[dg.AssetKey]:
    return [asset_key(level, PeriodType.DAILY) for level in Scope(scope).levels]


@dg.sensor(
    name="capacity_current_trigger",
    job=capacity_aggregate_current_job,
    minimum_interval_seconds=3,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches capacity_aggregate_current for each pending TaskRun the API wrote.",
)
def capacity_current_trigger(context: dg.SensorEvaluationContext, whalefall: WhaleFallDatabase):  # noqa: ANN201
    center = RunCenter(whalefall.engine())
    today = china_today().isoformat()  # the current period is today's, Asia/Shanghai (spec 6.2)
    requests, rejected = [], []
    for task_run in center.runs_in_states([c.CURRENT_TASK_KEY], [c.PENDING]):
        run_id = task_run["run_id"]
        if find_dagster_run(context.instance, run_id) is not None:
            continue  # launched already; the run's first step moves it to running
        try:
            scope = scope_of_trigger(task_run)
            if not PARTITIONS[PeriodType.DAILY].has_partition_key(today):
                raise ValueError(f"today ({today}) is before the first daily partition")
        except InvalidScope as error:
            rejected.append((run_id, f"trigger rejected: {error} (got {error.requested!r})"))
            continue
        except ValueError as error:
            rejected.append((run_id, f"trigger rejected: {error}"))
            continue
        tags = {TASK_RUN_TAG: run_id, SCOPE_TAG: scope}
        if task_run["created_by"] is not None:
            tags[CREATED_BY_TAG] = str(task_run["created_by"])
        requests.append(
            dg.RunRequest(
                run_key=f"{c.CURRENT_TASK_KEY}:{run_id}",
                partition_key=today,
                asset_selection=_selection(scope),
                tags=tags,
            )
        )
    for run_id, reason in rejected:  # visible in the run center and in the sensor's log
        center.mark_run_failed(run_id, reason)
        context.log.warning(f"TaskRun {run_id}: {reason}")
    if not requests:
        reason = f"rejected {len(rejected)} trigger(s)" if rejected else "no pending trigger"
        return dg.SkipReason(reason)
    return dg.SensorResult(run_requests=requests)
