"""The steps' hooks: the normal way a run's TaskRuns become final, as each step ends.

Both hand the step's outcome to the run center's one rule (domain/run_center/settle.py): a step
that succeeded, or failed only per instance (the failures are in the items), settles each TaskRun
once its items are all final; any other failure fails the TaskRuns and their open items with the
step's reason. What hooks cannot see (a terminated run, a dead worker) the reconciler settles.
"""

from __future__ import annotations

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.defs.run_center.step import InstancesFailed, RunCenterClosed
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.settle import Failed, Outcome, Settlement, Succeeded, settle
from capacity_pipeline.domain.storage.dialects import first_line


def settle_run(engine: Engine, run_id: str, outcome: Outcome) -> list[Settlement]:
    """Every TaskRun of the Dagster run, settled as `outcome` says."""
    return [settle(engine, task_run_id, outcome) for task_run_id in RunClaims(engine).task_runs_of(run_id)]


def step_failure_reason(error: BaseException | None) -> str:
    """The first line of why a step failed (a Failure's description, else the error itself)."""
    if error is None:
        return "the step failed"
    description = getattr(error, "description", None)
    return first_line(RuntimeError(description)) if description else first_line(error)


def _log(context: dg.HookContext, settled: list[Settlement]) -> None:
    for settlement in settled:
        if settlement.ended_now or settlement.repaired:
            status = settlement.status.value if settlement.status else "gone"
            context.log.info(f"Run center: TaskRun {settlement.task_run_id} is {status}")


@dg.success_hook(name="settle_run_center", required_resource_keys={"whalefall"})
def settle_run_center(context: dg.HookContext) -> None:
    """The step succeeded: its run's TaskRuns become final once all their items are."""
    _log(context, settle_run(context.resources.whalefall.engine(), context.run_id, Succeeded(run_ended=False)))


@dg.failure_hook(name="fail_run_center", required_resource_keys={"whalefall"})
def fail_run_center(context: dg.HookContext) -> None:
    """The step failed. Failed instances are in the items already (the TaskRun ends failed once they
    are all final); any other failure fails the TaskRuns and their open items with its reason."""
    error = context.op_exception
    if isinstance(error, InstancesFailed | RunCenterClosed):
        outcome: Outcome = Succeeded(run_ended=False)
    else:
        outcome = Failed(step_failure_reason(error))
    _log(context, settle_run(context.resources.whalefall.engine(), context.run_id, outcome))


RUN_CENTER_HOOKS = {settle_run_center, fail_run_center}
