"""The steps' hooks: the normal way a run's TaskRuns become final, as each step ends.

A success settles every TaskRun of the run once all its items are; a failure fails the TaskRuns
and their open items with the step's reason, unless the instances' failures are in the items
already. What hooks cannot see (a terminated run, a dead worker) the reconciler settles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg
from sqlalchemy import Engine

from capacity_pipeline.defs.run_center.step import InstancesFailed, RunCenterClosed
from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import IN_PROGRESS, TaskStatus
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.payloads import with_overall_status
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.storage.dialects import first_line


def final_summary(task_key: str) -> Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]] | None:
    """How finalize fills a TaskRun's summary: the current-period status from its items (compat 6.2);
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


def step_failure_reason(error: BaseException | None) -> str:
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
    failure = None if settled_already else step_failure_reason(error)
    settled = settle(context.resources.whalefall.engine(), context.run_id, failure=failure)
    for task_run_id, status in settled.items():
        context.log.info(f"Run center: TaskRun {task_run_id} is {status.value if status else 'gone'}")


RUN_CENTER_HOOKS = {settle_run_center, fail_run_center}
