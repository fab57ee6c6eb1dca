"""The run center's rows: WhaleFall's TaskRunsWriteService semantics (spec 6.1) in plain SQL.

Every write sets `updated_at` (there is no trigger for it, spec 1.7). Status only moves forward:
a run leaves `pending`/`running` once and is never written back, whatever order the callers
arrive in, so a late or repeated event cannot resurrect or overwrite a finished run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Connection, Engine, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.aggregation import ActiveInstance
from capacity_pipeline.domain.tables import tables_for


@dataclass(frozen=True)
class TaskRunSpec:
    """The columns a run is created with (spec 6.2 / 6.3)."""

    task_key: str
    task_name: str
    trigger_source: str
    summary_json: dict[str, Any]
    result_url: str | None = None
    created_by: int | None = None
    task_category: str = c.TASK_CATEGORY


@dataclass(frozen=True)
class ItemOutcome:
    """A finished item: `completed` (metrics/details replace the old ones) or `failed`."""

    instance_id: int
    status: str
    metrics_json: dict[str, Any] | None
    details_json: dict[str, Any] | None
    error_message: str | None = None


@dataclass(frozen=True)
class Progress:
    total: int
    completed: int
    failed: int


# Python None binds as SQL NULL here (not JSON null), so COALESCE keeps the stored value.
_JSON_OR_NULL = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _insert_ignoring_conflicts(engine: Engine, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING."""
    if engine.dialect.name == "postgresql":
        return postgresql_insert(table)
    return sqlite_insert(table)


def _now() -> datetime:
    return datetime.now(UTC)


class RunCenter:
    """Writes one WhaleFall database's task_runs / task_run_items."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        tables = tables_for(engine).tables
        self.runs = tables["task_runs"]
        self.items = tables["task_run_items"]
        self.instances = tables["instances"]

    # -- runs ---------------------------------------------------------------------------------

    def create_run(self, run_id: str, spec: TaskRunSpec, *, status: str = c.RUNNING) -> bool:
        """Insert the run unless a run with this run_id exists (then it is adopted); True if new.

        Safe when two steps of one Dagster run race to create it: the loser adopts.
        """
        now = _now()
        statement = _insert_ignoring_conflicts(self.engine, self.runs).values(
            run_id=run_id,
            task_key=spec.task_key,
            task_name=spec.task_name,
            task_category=spec.task_category,
            trigger_source=spec.trigger_source,
            status=status,
            started_at=now,
            created_by=spec.created_by,
            summary_json=spec.summary_json,
            result_url=spec.result_url,
            created_at=now,
            updated_at=now,
        )
        with self.engine.begin() as connection:
            inserted = statement.on_conflict_do_nothing(index_elements=["run_id"]).returning(self.runs.c.id)
            return connection.execute(inserted).first() is not None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = self._run_row(connection, run_id)
            return None if row is None else dict(row._mapping)

    def get_items(self, run_id: str) -> list[dict[str, Any]]:
        """Items in WhaleFall's order, id ascending (spec 1.8)."""
        query = select(self.items).where(self.items.c.run_id == run_id).order_by(self.items.c.id)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def runs_in_states(
        self, task_keys: Sequence[str], statuses: Sequence[str], *, updated_since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Runs of these task keys in these states (oldest first), for reconciling with Dagster."""
        query = select(self.runs).where(self.runs.c.task_key.in_(task_keys), self.runs.c.status.in_(statuses))
        if updated_since is not None:
            query = query.where(self.runs.c.updated_at >= updated_since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query.order_by(self.runs.c.id))]

    def status(self, run_id: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(select(self.runs.c.status).where(self.runs.c.run_id == run_id)).scalar()

    def is_cancelled(self, run_id: str) -> bool:
        return self.status(run_id) == c.CANCELLED

    def start_run(self, run_id: str) -> bool:
        """pending -> running (a run created ahead of its execution); True if it is running now."""
        with self.engine.begin() as connection:
            connection.execute(
                update(self.runs)
                .where(self.runs.c.run_id == run_id, self.runs.c.status == c.PENDING)
                .values(status=c.RUNNING, started_at=_now(), updated_at=_now())
            )
            return self._run_row(connection, run_id).status == c.RUNNING

    def write_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        """Replace the summary; a cancelled or finished run keeps its own (spec 6.1)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(self.runs)
                .where(self.runs.c.run_id == run_id, self.runs.c.status.in_(c.IN_PROGRESS))
                .values(summary_json=summary, updated_at=_now())
            )

    def cancel_run(self, run_id: str, *, cancelled_by: int | None = None) -> bool:
        """WhaleFall's cancel (spec 7.3): the run and its open items become cancelled.

        `cancelled_by` is the user who asked (None: WhaleFall's own endpoint, or Dagster).

        WhaleFall accepts only `running`; a run created ahead of its execution is `pending`
        here, and cancelling it must also work, so both open states are accepted.
        """
        with self.engine.begin() as connection:
            now = _now()
            changed = connection.execute(
                update(self.runs)
                .where(self.runs.c.run_id == run_id, self.runs.c.status.in_(c.IN_PROGRESS))
                .values(status=c.CANCELLED, completed_at=now, updated_at=now)
            ).rowcount
            if changed:
                self._close_open_items(connection, run_id, c.CANCELLED, None, now)
            return bool(changed)

    def mark_run_failed(self, run_id: str, message: str) -> bool:
        """Spec 6.1 mark_run_failed: open items fail with the message, then the run; counters set."""
        with self.engine.begin() as connection:
            now = _now()
            changed = connection.execute(
                update(self.runs)
                .where(self.runs.c.run_id == run_id, self.runs.c.status.in_(c.IN_PROGRESS))
                .values(status=c.FAILED, error_message=message, completed_at=now, updated_at=now)
            ).rowcount
            if changed:
                self._close_open_items(connection, run_id, c.FAILED, message, now)
                self._write_progress(connection, run_id)
            return bool(changed)

    def finalize_run(self, run_id: str, summary: dict[str, Any] | None = None) -> str | None:
        """Spec 6.1 finalize_run, forward-only; returns the run's status afterwards.

        An open run becomes `failed` if any item failed (or was cancelled), else `completed`. A
        cancelled run keeps its status but gets consistent counters and a completion time
        (fixes spec Q14). A finished run is left alone.
        """
        with self.engine.begin() as connection:
            row = self._run_row(connection, run_id, lock=True)
            if row is None:
                return None
            now = _now()
            if row.status in c.IN_PROGRESS:
                progress = self._write_progress(connection, run_id)
                values: dict[str, Any] = {
                    "status": c.FAILED if progress.failed else c.COMPLETED,
                    "completed_at": now,
                    "updated_at": now,
                }
                if summary is not None:
                    values["summary_json"] = summary
                connection.execute(update(self.runs).where(self.runs.c.run_id == run_id).values(**values))
                return values["status"]
            if row.status == c.CANCELLED:
                self._write_progress(connection, run_id)
                connection.execute(
                    update(self.runs)
                    .where(self.runs.c.run_id == run_id)
                    .values(completed_at=func.coalesce(self.runs.c.completed_at, now), updated_at=now)
                )
            return row.status

    # -- items --------------------------------------------------------------------------------

    def snapshot_items(self, run_id: str, *, by_name: bool = False) -> list[ActiveInstance]:
        """One pending item per instance active when the run started, taken once (fixes spec Q20).

        Items are created in id order, or in name order for the nightly run (spec 6.3). Later
        callers of the same run (another step, a retry) get the same instances back from the
        items; an instance created after the run started never joins it, even when the first
        snapshot was empty. So every step of a run works on one snapshot.
        """
        with self.engine.begin() as connection:
            run = self._run_row(connection, run_id, lock=True)  # serialises racing steps of one run
            existing = self._item_instances(connection, run_id)
            if existing:
                return existing
            instances = self._instances_active_at(connection, run.started_at)
            if by_name:
                instances.sort(key=lambda instance: (instance.name, instance.id))
            now = _now()
            if instances:
                connection.execute(
                    insert(self.items),
                    [
                        {
                            "run_id": run_id,
                            "item_type": c.ITEM_TYPE,
                            "item_key": str(instance.id),
                            "item_name": instance.name,
                            "instance_id": instance.id,
                            "status": c.PENDING,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for instance in instances
                    ],
                )
            connection.execute(
                update(self.runs)
                .where(self.runs.c.run_id == run_id)
                .values(progress_total=len(instances), updated_at=now)
            )
            return self._item_instances(connection, run_id)

    def _instances_active_at(self, connection: Connection, started_at: datetime) -> list[ActiveInstance]:
        """Active instances (spec 1.1) that existed when the run started, in id order."""
        instances = self.instances
        rows = connection.execute(
            select(instances.c.id, instances.c.name)
            .where(
                instances.c.is_active.is_(True),
                instances.c.deleted_at.is_(None),
                or_(instances.c.created_at.is_(None), instances.c.created_at <= started_at),
            )
            .order_by(instances.c.id)
        )
        return [ActiveInstance(id=row.id, name=row.name) for row in rows]

    def start_items(self, run_id: str, instance_ids: Sequence[int]) -> None:
        """start_item for each: running unless already terminal; started_at kept if set."""
        if not instance_ids:
            return
        now = _now()
        with self.engine.begin() as connection:
            connection.execute(
                update(self.items)
                .where(
                    self.items.c.run_id == run_id,
                    self.items.c.item_type == c.ITEM_TYPE,
                    self.items.c.item_key.in_([str(i) for i in instance_ids]),
                    self.items.c.status.in_(c.IN_PROGRESS),
                )
                .values(
                    status=c.RUNNING,
                    started_at=func.coalesce(self.items.c.started_at, now),
                    updated_at=now,
                )
            )

    def record_outcomes(self, run_id: str, outcomes: Sequence[ItemOutcome]) -> Progress:
        """complete_item / fail_item for a batch, then the run's progress counters."""
        now = _now()
        items = self.items
        with self.engine.begin() as connection:
            for status, blocked in ((c.COMPLETED, (c.FAILED, c.CANCELLED)), (c.FAILED, (c.CANCELLED,))):
                rows = [
                    {
                        "key": str(o.instance_id),
                        "new_status": o.status,
                        "metrics": o.metrics_json,
                        "details": o.details_json,
                        "error": o.error_message,
                    }
                    for o in outcomes
                    if o.status == status
                ]
                if not rows:
                    continue
                values: dict[str, Any] = {
                    "status": bindparam("new_status"),
                    "completed_at": now,
                    "updated_at": now,
                    "details_json": func.coalesce(bindparam("details", type_=_JSON_OR_NULL), items.c.details_json),
                }
                if status == c.COMPLETED:
                    values["metrics_json"] = func.coalesce(
                        bindparam("metrics", type_=_JSON_OR_NULL), items.c.metrics_json
                    )
                else:
                    values["error_message"] = bindparam("error")
                statement = (
                    update(items)
                    .where(
                        items.c.run_id == run_id,
                        items.c.item_type == c.ITEM_TYPE,
                        items.c.item_key == bindparam("key"),
                        *(items.c.status != status_ for status_ in blocked),  # executemany: no IN
                    )
                    .values(**values)
                )
                connection.execute(statement, rows)
            return self._write_progress(connection, run_id, only_open=True)

    # -- helpers ------------------------------------------------------------------------------

    def _run_row(self, connection: Connection, run_id: str, *, lock: bool = False):  # noqa: ANN202
        query = select(self.runs).where(self.runs.c.run_id == run_id)
        if lock and connection.dialect.name == "postgresql":
            query = query.with_for_update()
        return connection.execute(query).first()

    def _item_instances(self, connection: Connection, run_id: str) -> list[ActiveInstance]:
        rows = connection.execute(
            select(self.items.c.instance_id, self.items.c.item_name)
            .where(self.items.c.run_id == run_id, self.items.c.item_type == c.ITEM_TYPE)
            .order_by(self.items.c.id)
        )
        return [ActiveInstance(id=row.instance_id, name=row.item_name) for row in rows]

    def _close_open_items(
        self, connection: Connection, run_id: str, status: str, message: str | None, now: datetime
    ) -> None:
        values: dict[str, Any] = {"status": status, "completed_at": now, "updated_at": now}
        if message is not None:
            values["error_message"] = message
        connection.execute(
            update(self.items)
            .where(self.items.c.run_id == run_id, self.items.c.status.in_(c.IN_PROGRESS))
            .values(**values)
        )

    def _write_progress(self, connection: Connection, run_id: str, *, only_open: bool = False) -> Progress:
        """Counters from the items: completed, and failed-or-cancelled (spec 6.1 finalize_run)."""
        items = self.items
        counts = connection.execute(
            select(
                func.count(),
                func.count(case((items.c.status == c.COMPLETED, 1))),
                func.count(case((items.c.status.in_((c.FAILED, c.CANCELLED)), 1))),
            ).where(items.c.run_id == run_id)
        ).one()
        progress = Progress(*counts)
        conditions = [self.runs.c.run_id == run_id]
        if only_open:
            conditions.append(self.runs.c.status.in_(c.IN_PROGRESS))
        connection.execute(
            update(self.runs)
            .where(and_(*conditions))
            .values(
                progress_total=progress.total,
                progress_completed=progress.completed,
                progress_failed=progress.failed,
                updated_at=_now(),
            )
        )
        return progress
