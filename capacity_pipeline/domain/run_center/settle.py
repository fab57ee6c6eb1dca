"""How a TaskRun ends: the one rule, for every way a run can end (compat 6.1, made consistent).

`settle(engine, task_run_id, outcome)` is the only way a TaskRun leaves `running`: the steps'
hooks, an interrupted worker, the API's cancel, the trigger launcher and the reconciler all call it
with a typed outcome. In one transaction (the run row locked first, then its items: the run
center's one lock order) it writes the status, closes the open items, and sets the counters from
the items as they are at that moment, so no later writer is needed to make them agree:

* `Succeeded`: completed, or failed when an item failed or was cancelled (finalize_run); open
  items wait for the run's next step (`run_ended=False`), or fail saying which phase never ran.
* `Failed`, `Interrupted`, `WorkerLost`: failed with the reason (mark_run_failed); so do open items.
* `Cancelled`: cancelled (cancel_run), and so are open items.

Counters follow compat 6.1 finalize_run: completed, and failed-or-cancelled. The status only moves
forward: a TaskRun closed already keeps its status, whatever the outcome, and is only made
consistent (counters from its items, completed_at, open items closed as its status says). So
WhaleFall's own cancel, which sets `cancelled` and leaves the counters as they were (compat 6.1,
Q14), is made consistent by whichever caller comes next.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, case, func, or_, select, update

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import IN_PROGRESS, Scope, TaskStatus
from capacity_pipeline.domain.run_center.payloads import with_overall_status
from capacity_pipeline.domain.run_center.task_runs import Progress, RunCenter
from capacity_pipeline.domain.storage.clock import Clock, database_clock
from capacity_pipeline.domain.storage.database import in_transaction

# -- outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Succeeded:
    """The work ended without a run-level failure: the items say how it went (an instance that
    failed is a failed item, and fails the TaskRun with no message, as WhaleFall's finalize does).

    `run_ended=False`: one step of the run ended and another may follow; while an item is still
    open nothing is written (the next step writes it). With the run over, an item still open was
    never finished: it fails, saying which phase never ran, and so does the TaskRun."""

    run_ended: bool = True


@dataclass(frozen=True)
class Failed:
    """The run failed outside the per-instance isolation (a lock timeout, a bad request, ...)."""

    reason: str


@dataclass(frozen=True)
class Interrupted:
    """The worker was interrupted without anyone asking (its code server or machine stopping)."""

    reason: str


@dataclass(frozen=True)
class WorkerLost:
    """The worker went away: killed, or silent past the heartbeat timeout."""

    reason: str


class CancelledIn(StrEnum):
    RUN_CENTER = "run center"  # WhaleFall's cancel, or the API's
    DAGSTER = "Dagster"  # terminated from the Dagster UI or GraphQL


@dataclass(frozen=True)
class Cancelled:
    """Someone asked: `by` is the user, when known (kept in summary_json.ext.data.cancelled_by,
    where the worker reads it for the run's log)."""

    by: int | None = None
    where: CancelledIn = CancelledIn.RUN_CENTER


Outcome = Succeeded | Failed | Interrupted | WorkerLost | Cancelled


@dataclass(frozen=True)
class Settlement:
    """What settling did to one TaskRun."""

    task_run_id: str
    status: TaskStatus | None  # afterwards; None when there is no such TaskRun
    ended_now: bool = False  # this call ended it
    repaired: bool = False  # it had ended already, and its counters or items were made consistent


# -- the rule -------------------------------------------------------------------------------------


def settle(engine: Engine, task_run_id: str, outcome: Outcome, *, clock: Clock = database_clock) -> Settlement:
    """End the TaskRun as `outcome` says (see the module docstring), in one transaction."""
    center = RunCenter(engine, clock)
    return in_transaction(engine, lambda connection: _settle(center, connection, task_run_id, outcome))


def _settle(center: RunCenter, connection: Connection, task_run_id: str, outcome: Outcome) -> Settlement:
    run = center.lock_runs(connection, [task_run_id]).get(task_run_id)
    if run is None:
        return Settlement(task_run_id, None)
    status = TaskStatus(run.status)
    if status not in IN_PROGRESS:
        return _make_consistent(center, connection, run)
    now = center.clock(connection)
    values: dict[str, Any] = {"completed_at": now, "updated_at": now}
    match outcome:
        case Cancelled(by=by):
            values["status"] = TaskStatus.CANCELLED
            if by is not None and (run.summary_json or {}).get("ext"):
                summary = run.summary_json
                data = {**summary["ext"].get("data", {}), "cancelled_by": by}
                values["summary_json"] = {**summary, "ext": {**summary["ext"], "data": data}}
            center.close_open_items(connection, task_run_id, TaskStatus.CANCELLED, None, now)
        case Failed(reason=reason) | Interrupted(reason=reason) | WorkerLost(reason=reason):
            values |= {"status": TaskStatus.FAILED, "error_message": reason}
            center.close_open_items(connection, task_run_id, TaskStatus.FAILED, reason, now)
        case Succeeded(run_ended=run_ended):
            unfinished = _open_items(center, connection, task_run_id)
            if unfinished and not run_ended:
                return Settlement(task_run_id, status)  # the run's next step writes them
            if unfinished:
                _fail_unfinished(center, connection, run, unfinished, now)
                values["error_message"] = f"{len(unfinished)} item(s) unfinished when the run ended"
            summary = _final_summary(run.task_key, run.summary_json, center.items_in(connection, task_run_id))
            if summary is not None:
                values["summary_json"] = summary
    progress = center.count_progress(connection, task_run_id)
    if "status" not in values:
        values["status"] = TaskStatus.FAILED if progress.failed else TaskStatus.COMPLETED
    _write_run(center, connection, task_run_id, {**values, **progress.columns()})
    return Settlement(task_run_id, TaskStatus(values["status"]), ended_now=True)


def _make_consistent(center: RunCenter, connection: Connection, run: Any) -> Settlement:
    """A closed TaskRun keeps its status; its counters, completion time and open items are made to
    agree with it (WhaleFall's cancel leaves the counters as they were)."""
    status, now, closed = TaskStatus(run.status), center.clock(connection), 0
    if status in (TaskStatus.CANCELLED, TaskStatus.FAILED):
        message = (run.error_message or "the run failed") if status is TaskStatus.FAILED else None
        closed = center.close_open_items(connection, run.run_id, status, message, now)
    progress, values = center.count_progress(connection, run.run_id), {}
    if _progress_of(run) != progress:
        values |= progress.columns()
    if run.completed_at is None:
        values["completed_at"] = now
    if not values and not closed:
        return Settlement(run.run_id, status)
    _write_run(center, connection, run.run_id, {**values, "updated_at": now})
    return Settlement(run.run_id, status, repaired=True)


def _progress_of(run: Any) -> Progress:
    return Progress(run.progress_total, run.progress_completed, run.progress_failed)


def _write_run(center: RunCenter, connection: Connection, task_run_id: str, values: Mapping[str, Any]) -> None:
    connection.execute(update(center.runs).where(center.runs.c.run_id == task_run_id).values(**values))


def _open_items(center: RunCenter, connection: Connection, task_run_id: str) -> list[Any]:
    items = center.items
    query = (
        select(items.c.id, items.c.details_json)
        .where(items.c.run_id == task_run_id, items.c.status.in_(IN_PROGRESS))
        .order_by(items.c.id)
    )
    return list(connection.execute(query))


def _fail_unfinished(center: RunCenter, connection: Connection, run: Any, unfinished: list[Any], now: datetime) -> None:
    """Items the ended run never finished fail, each saying which phase never ran."""
    phases = _expected_phases(run.task_key, run.summary_json)
    items = center.items
    rows = [{"item_id": item.id, "error": _unfinished_message(item.details_json, phases)} for item in unfinished]
    connection.execute(
        update(items)
        # Spelled without IN, which executemany cannot take.
        .where(items.c.id == bindparam("item_id"), or_(*(items.c.status == s for s in IN_PROGRESS)))
        .values(status=TaskStatus.FAILED, error_message=bindparam("error"), completed_at=now, updated_at=now),
        rows,
    )


def _expected_phases(task_key: str, summary: Mapping[str, Any] | None) -> tuple[str, ...]:
    if task_key == c.NIGHTLY_TASK_KEY:
        return ()
    scope = (((summary or {}).get("common") or {}).get("inputs") or {}).get("scope")
    return tuple(level.value for level in Scope(scope).levels) if scope in set(Scope) else ()


def _unfinished_message(details: Mapping[str, Any] | None, expected: tuple[str, ...]) -> str:
    done = set(((details or {}).get("phases")) or {})
    missing = [phase for phase in expected if phase not in done]
    if missing:
        return f"the run ended before this instance was finished: the {' and '.join(missing)} phase never ran"
    return "the run ended before this instance was aggregated"


def _final_summary(task_key: str, stored: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A current-period TaskRun's summary shows the overall status of its items (compat 6.2); the
    nightly run wrote its final summary itself (compat 6.4)."""
    if task_key == c.NIGHTLY_TASK_KEY or "period_start" not in ((stored or {}).get("ext") or {}).get("data", {}):
        return None
    return with_overall_status(stored, items)


# -- finding TaskRuns that still disagree ---------------------------------------------------------


def inconsistent_task_runs(engine: Engine, task_keys: Collection[str], started_since: datetime) -> list[str]:
    """Closed TaskRuns of these task keys, started since then, whose counters, completion time or
    open items disagree with their status (one query; the reconciler settles them)."""
    center = RunCenter(engine)
    runs, items = center.runs, center.items
    recent = (
        runs.c.task_key.in_(list(task_keys)),
        runs.c.started_at >= started_since,
        runs.c.status.not_in(IN_PROGRESS),
    )
    counts = (
        select(
            items.c.run_id,
            func.count().label("total"),
            func.count(case((items.c.status == TaskStatus.COMPLETED, 1))).label("completed"),
            func.count(case((items.c.status.in_((TaskStatus.FAILED, TaskStatus.CANCELLED)), 1))).label("failed"),
            func.count(case((items.c.status.in_(IN_PROGRESS), 1))).label("open"),
        )
        .where(items.c.run_id.in_(select(runs.c.run_id).where(*recent)))
        .group_by(items.c.run_id)
        .subquery()
    )
    query = (
        select(runs.c.run_id)
        .outerjoin(counts, counts.c.run_id == runs.c.run_id)
        .where(
            *recent,
            or_(
                runs.c.completed_at.is_(None),
                runs.c.progress_total != func.coalesce(counts.c.total, 0),
                runs.c.progress_completed != func.coalesce(counts.c.completed, 0),
                runs.c.progress_failed != func.coalesce(counts.c.failed, 0),
                (func.coalesce(counts.c.open, 0) > 0) & runs.c.status.in_((TaskStatus.FAILED, TaskStatus.CANCELLED)),
            ),
        )
        .order_by(runs.c.id)
    )
    with engine.connect() as connection:
        return [row.run_id for row in connection.execute(query)]
