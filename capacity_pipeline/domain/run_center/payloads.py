"""The JSON WhaleFall's run center reads: summary envelopes (compat 6.4) and item payloads (6.2, 6.3).

An item may be written by several phases (with scope `all`, the database and the instance phase
of compat 6.2). Each phase's result is kept under `details_json.phases` until the last one arrives;
only then does the item become final, with exactly the status, metrics, details and error that
WhaleFall's complete_item / fail_item rules would have left (compat 6.1, Q10).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import InstanceOutcome, Level, Outcome, Scope, TaskStatus
from capacity_pipeline.domain.periods import PeriodType, Window


def metric(key: str, label: str, value: Any, unit: str | None = None, tone: str = "info") -> dict[str, Any]:
    """A summary metric item: all five keys, always (compat 6.4)."""
    return {"key": key, "label": label, "value": value, "unit": unit, "tone": tone}


def envelope(
    task_key: str,
    inputs: dict[str, Any],
    data: dict[str, Any],
    metrics: Sequence[dict[str, Any]] = (),
    skip_reason: str | None = None,
) -> dict[str, Any]:
    """The v1 summary envelope: top-level keys version, common and ext only; ext.type = task_key."""
    return {
        "version": 1,
        "common": {
            "inputs": inputs,
            "scope": {"time": None, "target": {}},
            "metrics": list(metrics),
            "highlights": [],
            "flags": {"skipped": skip_reason is not None, "skip_reason": skip_reason},
        },
        "ext": {"type": task_key, "version": 1, "data": data},
    }


@dataclass(frozen=True)
class PhaseResult:
    """What one phase writes into an item: WhaleFall's complete_item (completed) or fail_item (failed)."""

    status: TaskStatus
    metrics_json: dict[str, Any] | None
    details_json: dict[str, Any]
    error_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "metrics_json": self.metrics_json,
            "details_json": self.details_json,
            "error_message": self.error_message,
        }

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> PhaseResult:
        return cls(
            TaskStatus(stored["status"]), stored["metrics_json"], stored["details_json"], stored["error_message"]
        )


def replay_phases(phases: Mapping[str, PhaseResult]) -> PhaseResult:
    """The item WhaleFall leaves after running the phases in order (phase keys sort in WhaleFall's
    order: database before instance): complete_item is ignored once the item failed
    and keeps no error; fail_item overwrites details and error but keeps earlier metrics (compat 6.1)."""
    status, metrics, details, error = TaskStatus.RUNNING, None, {}, None
    for key in sorted(phases):
        phase = phases[key]
        if phase.status is TaskStatus.FAILED:
            status, details, error = TaskStatus.FAILED, phase.details_json, phase.error_message
        elif status is not TaskStatus.FAILED:
            status, metrics, details = TaskStatus.COMPLETED, phase.metrics_json, phase.details_json
    return PhaseResult(status, metrics, details, error)


def phase_outcomes(details_json: Mapping[str, Any] | None) -> list[Outcome]:
    """The runner outcomes (completed / skipped / failed) recorded in a final item's details."""
    details = details_json or {}
    phases = details.get("phases")
    payloads = [stored["details_json"] for stored in phases.values()] if phases else [details]
    return [Outcome(payload["status"]) for payload in payloads if payload.get("status") in set(Outcome)]


# -- the manual "current period" run and hand-made materializations (compat 6.2) ------------------


def current_summary(
    task_key: str,
    scope: Scope,
    *,
    period_type: PeriodType = PeriodType.DAILY,
    requested_period_type: str | None = None,
    window: Window | None = None,
    status: str | None = None,
    message: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Bare at creation (no window); with the window, the run's scope metrics and data.

    `requested_period_type` is what the caller asked for (default: what ran), shown beside the
    effective period type as WhaleFall's summary does.
    """
    if window is None:
        return envelope(task_key, {"scope": scope.value}, {**(extra or {})})
    requested = period_type.value if requested_period_type is None else requested_period_type
    values = {"scope": scope.value, "requested_period_type": requested, "effective_period_type": period_type.value}
    data = {
        **values,
        "period_start": window.start.isoformat(),
        "period_end": window.end.isoformat(),
        "status": status,
        "message": message,
        **(extra or {}),
    }
    metrics = [metric(key, label, values[key]) for key, label in c.SCOPE_METRICS]
    return envelope(task_key, {"scope": scope.value}, data, metrics)


def overall_current_status(outcomes: Iterable[Outcome]) -> tuple[str, str]:
    """aggregate_current_period's overall status and message (compat 6.2, end), from every instance's
    outcome in every phase: a phase failed when one instance failed in it, and was skipped when no
    instance was processed in it."""
    seen = set(outcomes)
    if Outcome.FAILED in seen:
        status = "failed"
    elif Outcome.COMPLETED not in seen:
        status = "skipped"
    else:
        status = "completed"
    return status, c.CURRENT_OVERALL[status]


def with_overall_status(summary: dict[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The current-period summary with the overall status and message its items show."""
    outcomes = [outcome for item in items for outcome in phase_outcomes(item["details_json"])]
    status, message = overall_current_status(outcomes)
    data = summary["ext"]["data"]
    return {**summary, "ext": {**summary["ext"], "data": {**data, "status": status, "message": message}}}


def current_phase_result(
    outcome: InstanceOutcome, level: Level, scope: Scope, period_type: PeriodType, window: Window
) -> PhaseResult:
    """One instance in one phase, as WhaleFall's runner callbacks write it (compat 6.2 step 4)."""
    name = outcome.instance.name
    status = outcome.level_status(level)
    message = c.CURRENT_MESSAGES[level.value, status.value].format(
        name=name,
        period=period_type.value,
        n=outcome.records_read.get(level, 0),
        start=window.start.isoformat(),
        end=window.end.isoformat(),
    )
    details: dict[str, Any] = {"status": status.value}
    if status is not Outcome.FAILED:
        details["processed_records"] = outcome.records_read.get(level, 0)
    details |= {
        "message": message,
        "errors": [outcome.error] if status is Outcome.FAILED else [],
        "period_type": period_type.value,
        "period_start": window.start.isoformat(),
        "period_end": window.end.isoformat(),
        "instance_id": outcome.instance.id,
        "instance_name": name,
    }
    if status is Outcome.FAILED:
        details["error"] = outcome.error
        return PhaseResult(TaskStatus.FAILED, None, details, message)  # the runner's sentence (compat Q10)
    metrics = {
        "processed_records": details["processed_records"],
        "runner": level.value,
        "scope": scope.value,
        "period_type": period_type.value,
    }
    return PhaseResult(TaskStatus.COMPLETED, metrics, details)  # "no data" is a completed item (compat Q9)


# -- the nightly run (compat 6.3, 6.4) ------------------------------------------------------------

NIGHTLY_PHASE = "nightly"  # one phase: an instance's item is final once its periods ran


def nightly_period_result(outcome: InstanceOutcome, period: PeriodType, window: Window) -> dict[str, Any]:
    """One period's result for one instance (instance level decides, as in WhaleFall's step)."""
    name = outcome.instance.name
    status = outcome.level_status(Level.INSTANCE)
    result: dict[str, Any] = {
        "status": status.value,
        "instance_id": outcome.instance.id,
        "instance_name": name,
        "period_type": period.value,
        "processed_records": 1 if status is Outcome.COMPLETED else 0,
        "message": c.NIGHTLY_PERIOD_MESSAGES[status.value].format(
            name=name,
            period=period.value,
            start=window.start.isoformat(),
            end=window.end.isoformat(),
            error=outcome.error,
        ),
        "period_start": window.start.isoformat(),
        "period_end": window.end.isoformat(),
    }
    if period is PeriodType.DAILY:
        result["period_date"] = window.start.isoformat()
    if status is Outcome.FAILED:
        result["errors"] = [outcome.error]
    return result


def nightly_item_result(
    instance_id: int, instance_name: str, periods: Mapping[PeriodType, dict[str, Any]]
) -> PhaseResult:
    """An instance's item once its periods ran (compat 6.3)."""
    count = sum(1 for result in periods.values() if result["status"] == Outcome.COMPLETED)
    errors = [
        f"{period.value}: {result['errors'][0]}" for period, result in periods.items() if result["status"] == "failed"
    ]
    details = {
        "aggregations_created": count,
        "aggregation_count": count,
        "periods": {period.value: result for period, result in periods.items()},
        "errors": errors,
        "instance_id": instance_id,
        "instance_name": instance_name,
    }
    if errors:
        return PhaseResult(TaskStatus.FAILED, None, details, "; ".join(errors))
    return PhaseResult(TaskStatus.COMPLETED, {"aggregated_count": count}, details)


def nightly_summary(
    *,
    requested_periods: list[str] | None = None,
    periods_executed: Sequence[str] | None = None,
    instances: Mapping[str, int] | None = None,
    records: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Bare when created; the final summary once the periods ran (compat 6.4)."""
    inputs = {"requested_periods": requested_periods}
    if periods_executed is None or instances is None or records is None:
        return envelope(c.NIGHTLY_TASK_KEY, inputs, {**(extra or {})})
    values = {
        "instances_total": instances["total"],
        "instances_successful": instances["successful"],
        "instances_failed": instances["failed"],
        "records_total": records["total"],
    }
    metrics = [metric(key, label, values[key], unit, tone) for key, label, unit, tone in c.NIGHTLY_METRICS]
    data = {
        "periods_executed": list(periods_executed),
        "instances": dict(instances),
        "records": dict(records),
        "session_id": None,  # the legacy sync_sessions tables are not written (README, compat 1.9)
        **(extra or {}),
    }
    return envelope(c.NIGHTLY_TASK_KEY, inputs, data, metrics)
