"""The manual "current period" trigger: the TaskRun WhaleFall's route writes is the trigger (compat 6.2, 7.1).

The route writes one row, exactly as WhaleFall's start_run does (status `running`, compat 6.1), with
the scope in `summary_json.common.inputs.scope` and, when the caller named one, the requested
period type in `summary_json.ext.data`. A launcher (the Dagster sensor) picks each such row up
once (claims.py). Because the row is `running` from the start, WhaleFall's own run center can
cancel it at once, before any run exists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import InvalidScope, Scope, TaskStatus
from capacity_pipeline.domain.periods import PeriodType
from capacity_pipeline.domain.run_center.payloads import current_summary
from capacity_pipeline.domain.run_center.task_runs import RunCenter, TaskRunSpec


def effective_period(requested: Any) -> PeriodType:
    """The period a request runs: its `period_type` when it names one, else daily (the API model's
    field, which WhaleFall ignores and treats as daily, compat 7.1 and Q18)."""
    if isinstance(requested, str):
        try:
            return PeriodType(requested.strip().lower())
        except ValueError:
            pass
    return PeriodType.DAILY


def current_task_run_spec(
    scope: Scope, created_by: int | None, requested_period_type: str | None = None
) -> TaskRunSpec:
    """The TaskRun of compat 6.2 as the request creates it (bare summary envelope)."""
    extra = {"requested_period_type": requested_period_type} if requested_period_type is not None else None
    return TaskRunSpec(
        task_key=c.CURRENT_TASK_KEY,
        task_name=c.CURRENT_TASK_NAME,
        trigger_source=c.TRIGGER_MANUAL,
        created_by=created_by,
        result_url=c.CURRENT_RESULT_URL[scope.value],
        summary_json=current_summary(c.CURRENT_TASK_KEY, scope, extra=extra),
    )


def request_current_aggregation(engine: Engine, scope: Scope, created_by: int | None, period_type: Any = None) -> str:
    """Write the trigger (a running TaskRun, compat 6.1 start_run) and return its run_id."""
    run_id = str(uuid.uuid4())
    # What the caller asked for, as the summary's "请求周期" shows it (bounded like period_type columns).
    requested = period_type.strip()[:20] if isinstance(period_type, str) else None
    RunCenter(engine).create_run(run_id, current_task_run_spec(scope, created_by, requested), status=TaskStatus.RUNNING)
    return run_id


@dataclass(frozen=True)
class TriggerRequest:
    """What a trigger row asks for."""

    scope: Scope
    period: PeriodType
    requested_period_type: str


def read_trigger(task_run: dict[str, Any]) -> TriggerRequest:
    """The request a trigger row carries; InvalidScope when its scope is missing or unknown."""
    summary = task_run.get("summary_json") or {}
    inputs = (summary.get("common") or {}).get("inputs") or {}
    try:
        scope = Scope(inputs.get("scope"))
    except ValueError:
        raise InvalidScope(inputs.get("scope")) from None
    requested = ((summary.get("ext") or {}).get("data") or {}).get("requested_period_type")
    period = effective_period(requested)
    return TriggerRequest(scope, period, requested if isinstance(requested, str) else period.value)
