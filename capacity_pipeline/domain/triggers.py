"""The manual "current period" trigger: a pending TaskRun is the trigger (spec 6.2, 7.1).

WhaleFall's route writes one row, the TaskRun it already writes, with `status = 'pending'` and
the scope in `summary_json.common.inputs.scope`; the Dagster sensor turns each pending row into
one run. One INSERT, in the route's own transaction, no second table to keep in step.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Engine

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.aggregation import Scope
from capacity_pipeline.domain.runcenter import RunCenter, TaskRunSpec
from capacity_pipeline.domain.taskrun_payloads import current_summary

SCOPE_ERROR = "scope 参数仅支持 instance、database 或 all"  # spec 7.1


class InvalidScope(ValueError):
    """A scope outside instance / database / all; the message is WhaleFall's (spec 7.1)."""

    def __init__(self, requested: Any) -> None:
        super().__init__(SCOPE_ERROR)
        self.requested = requested


def normalise_scope(value: Any) -> str:
    """Spec 7.1: a non-blank string is stripped and lowercased; anything else means `all`."""
    if isinstance(value, str) and value.strip():
        scope = value.strip().lower()
        if scope not in {s.value for s in Scope}:
            raise InvalidScope(value)
        return scope
    return Scope.ALL.value


def current_task_run_spec(scope: str, created_by: int | None) -> TaskRunSpec:
    """The TaskRun of spec 6.2 as the request creates it (bare summary envelope)."""
    return TaskRunSpec(
        task_key=c.CURRENT_TASK_KEY,
        task_name=c.CURRENT_TASK_NAME,
        trigger_source=c.TRIGGER_MANUAL,
        created_by=created_by,
        result_url=c.CURRENT_RESULT_URL[scope],
        summary_json=current_summary(c.CURRENT_TASK_KEY, scope),
    )


def request_current_aggregation(engine: Engine, scope: Any, created_by: int | None) -> str:
    """Write the trigger (a pending TaskRun) and return its run_id; bad scope writes nothing."""
    normalised = normalise_scope(scope)
    run_id = str(uuid.uuid4())
    RunCenter(engine).create_run(run_id, current_task_run_spec(normalised, created_by), status=c.PENDING)
    return run_id


def scope_of_trigger(task_run: dict[str, Any]) -> str:
    """The scope a pending TaskRun asks for; InvalidScope when it is missing or unknown."""
    summary = task_run.get("summary_json") or {}
    inputs = (summary.get("common") or {}).get("inputs") or {}
    scope = inputs.get("scope")
    if scope not in {s.value for s in Scope}:
        raise InvalidScope(scope)
    return scope
