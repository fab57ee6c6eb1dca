"""The JSON WhaleFall's run center reads: summary envelopes (spec 6.4) and item payloads (6.2, 6.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.aggregation import InstanceOutcome, Level, Status
from capacity_pipeline.domain.periods import PeriodType, Window


def metric(key: str, label: str, value: Any, unit: str | None = None, tone: str = "info") -> dict[str, Any]:
    """A summary metric item: all five keys, always (spec 6.4)."""
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


# -- the manual "current period" run and hand-made materializations (spec 6.2) ------------------


def current_summary(
    task_key: str,
    scope: str,
    *,
    period_type: str = PeriodType.DAILY.value,
    window: Window | None = None,
    status: str | None = None,
    message: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Bare at creation (no window); with the window, the run's scope metrics and data."""
    if window is None:
        return envelope(task_key, {"scope": scope}, {**(extra or {})})
    values = {"scope": scope, "requested_period_type": period_type, "effective_period_type": period_type}
    data = {
        **values,
        "period_start": window.start.isoformat(),
        "period_end": window.end.isoformat(),
        "status": status,
        "message": message,
        **(extra or {}),
    }
    metrics = [metric(key, label, values[key]) for key, label in c.SCOPE_METRICS]
    return envelope(task_key, {"scope": scope}, data, metrics)


def overall_current_status(phase_statuses: Sequence[str]) -> tuple[str, str]:
    """aggregate_current_period's overall status and message (spec 6.2, end)."""
    if Status.FAILED in phase_statuses:
        status = "failed"
    elif phase_statuses and all(s == Status.SKIPPED for s in phase_statuses):
        status = "skipped"
    else:
        status = "completed"
    return status, c.CURRENT_OVERALL[status]


def phase_status(outcomes: Sequence[InstanceOutcome], level: Level) -> str:
    """A runner's PeriodSummary status (spec 4.3): failed > skipped (nothing processed) > completed."""
    statuses = [outcome.level_status(level) for outcome in outcomes]
    if Status.FAILED in statuses:
        return Status.FAILED
    if not any(s == Status.COMPLETED for s in statuses):
        return Status.SKIPPED
    return Status.COMPLETED


def current_item_payload(
    outcome: InstanceOutcome, level: Level, scope: str, period_type: str, window: Window
) -> tuple[str, dict[str, Any] | None, dict[str, Any], str | None]:
    """(item status, metrics_json, details_json, error_message) of one instance in one phase."""
    name = outcome.instance.name
    status = outcome.level_status(level)
    message = c.CURRENT_MESSAGES[level.value, status.value].format(
        name=name,
        period=period_type,
        n=outcome.records_read.get(level, 0),
        start=window.start.isoformat(),
        end=window.end.isoformat(),
    )
    details: dict[str, Any] = {"status": status.value}
    if status is not Status.FAILED:
        details["processed_records"] = outcome.records_read.get(level, 0)
    details |= {
        "message": message,
        "errors": [outcome.error] if status is Status.FAILED else [],
        "period_type": period_type,
        "period_start": window.start.isoformat(),
        "period_end": window.end.isoformat(),
        "instance_id": outcome.instance.id,
        "instance_name": name,
    }
    if status is Status.FAILED:
        details["error"] = outcome.error
        return c.FAILED, None, details, message  # the runner's sentence; the error is in details
    metrics = {
        "processed_records": details["processed_records"],
        "runner": level.value,
        "scope": scope,
        "period_type": period_type,
    }
    return c.COMPLETED, metrics, details, None  # "no data" is a completed item (spec Q9)


# -- the nightly run (spec 6.3, 6.4) ------------------------------------------------------------


def nightly_period_result(outcome: InstanceOutcome, period: PeriodType, window: Window) -> dict[str, Any]:
    """One period's result for one instance (instance level decides, as in WhaleFall's step)."""
    name = outcome.instance.name
    status = outcome.level_status(Level.INSTANCE)
    result: dict[str, Any] = {
        "status": status.value,
        "instance_id": outcome.instance.id,
        "instance_name": name,
        "period_type": period.value,
        "processed_records": 1 if status is Status.COMPLETED else 0,
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
    if status is Status.FAILED:
        result["errors"] = [outcome.error]
    return result


def nightly_item_payload(
    instance_id: int, instance_name: str, periods: Mapping[PeriodType, dict[str, Any]]
) -> tuple[str, dict[str, Any] | None, dict[str, Any], str | None]:
    """(item status, metrics_json, details_json, error_message) once an instance's periods ran."""
    count = sum(1 for result in periods.values() if result["status"] == Status.COMPLETED)
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
        return c.FAILED, None, details, "; ".join(errors) or c.NIGHTLY_ITEM_FAILED_FALLBACK
    return c.COMPLETED, {"aggregated_count": count}, details, None


def nightly_summary(
    *,
    requested_periods: list[str] | None = None,
    periods_executed: Sequence[str] | None = None,
    instances: Mapping[str, int] | None = None,
    records: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Bare when created; the final summary once the periods ran (spec 6.4)."""
    inputs = {"requested_periods": requested_periods}
    if periods_executed is None:
        return envelope(c.NIGHTLY_TASK_KEY, inputs, {**(extra or {})})
    assert instances is not None and records is not None
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
        "session_id": None,  # the legacy sync_sessions tables are not written (README, spec 1.9)
        **(extra or {}),
    }
    return envelope(c.NIGHTLY_TASK_KEY, inputs, data, metrics)
