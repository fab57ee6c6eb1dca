"""The run center's rows: WhaleFall's TaskRunsWriteService semantics (compat 6.1) in plain SQL.

* Status only moves forward: a run leaves `pending`/`running` once and is never written back,
  whatever order the callers arrive in, so a late or repeated event cannot resurrect a finished run.
* One lock order for every write: the run rows first (in run_id order), then their items, as
  WhaleFall's own cancel does. A deadlock or serialization failure is retried.
* An item is final only after its last phase (scope `all` has two): until then each phase's
  result waits in `details_json.phases`, so progress never reaches 100 % while work remains.
* Every write sets `updated_at` (there is no trigger for it, compat 1.7), read from one clock
  (the database's by default, storage/clock.py).
* How a run ends is not written here: settle.py is the one rule for that.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import JSON, Connection, Engine, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.model import IN_PROGRESS, ActiveInstance, TaskStatus
from capacity_pipeline.domain.run_center.payloads import PhaseResult, replay_phases
from capacity_pipeline.domain.samples.instances import list_active_instances
from capacity_pipeline.domain.storage.clock import Clock, database_clock
from capacity_pipeline.domain.storage.database import in_transaction
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.tables import tables_for

T = TypeVar("T")


@dataclass(frozen=True)
class TaskRunSpec:
    """The columns a run is created with (compat 6.2 / 6.3)."""

    task_key: str
    task_name: str
    trigger_source: str
    summary_json: dict[str, Any]
    result_url: str | None = None
    created_by: int | None = None
    task_category: str = c.TASK_CATEGORY


@dataclass(frozen=True)
class ItemPhase:
    """One instance's result in one phase of a run."""

    instance_id: int
    phase: str
    result: PhaseResult


@dataclass(frozen=True)
class Progress:
    total: int
    completed: int
    failed: int

    def columns(self) -> dict[str, int]:
        return {"progress_total": self.total, "progress_completed": self.completed, "progress_failed": self.failed}


# Python None binds as SQL NULL here (not JSON null), so "no metrics" stays a NULL column.
_JSON_OR_NULL = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class RunCenter:
    """Writes one WhaleFall database's task_runs / task_run_items."""

    def __init__(self, engine: Engine, clock: Clock = database_clock) -> None:
        self.engine = engine
        self.clock = clock
        self.dialect = dialect_of(engine)
        tables = tables_for(engine).tables
        self.runs = tables["task_runs"]
        self.items = tables["task_run_items"]

    # -- reading ----------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(self.runs).where(self.runs.c.run_id == run_id)).first()
            return None if row is None else dict(row._mapping)

    def get_items(self, run_id: str) -> list[dict[str, Any]]:
        """Items in WhaleFall's order, id ascending (compat 1.8)."""
        query = select(self.items).where(self.items.c.run_id == run_id).order_by(self.items.c.id)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def statuses(self, run_ids: Collection[str]) -> dict[str, TaskStatus]:
        if not run_ids:
            return {}
        query = select(self.runs.c.run_id, self.runs.c.status).where(self.runs.c.run_id.in_(list(run_ids)))
        with self.engine.connect() as connection:
            return {row.run_id: TaskStatus(row.status) for row in connection.execute(query)}

    def status(self, run_id: str) -> TaskStatus | None:
        return self.statuses([run_id]).get(run_id)

    # -- runs -------------------------------------------------------------------------------------

    def create_run(self, run_id: str, spec: TaskRunSpec, *, status: TaskStatus = TaskStatus.RUNNING) -> bool:
        """Insert the run (WhaleFall's start_run) unless one with this run_id exists; True if new."""

        def create(connection: Connection) -> bool:
            now = self.clock(connection)
            statement = self.dialect.insert_ignoring_conflicts(self.runs).values(
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
            inserted = statement.on_conflict_do_nothing(index_elements=["run_id"]).returning(self.runs.c.id)
            return connection.execute(inserted).first() is not None

        return self._write(create)

    def write_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        """Replace the summary; a cancelled or finished run keeps its own (compat 6.1)."""

        def write(connection: Connection) -> None:
            connection.execute(
                update(self.runs)
                .where(self.runs.c.run_id == run_id, self.runs.c.status.in_(IN_PROGRESS))
                .values(summary_json=summary, updated_at=self.clock(connection))
            )

        self._write(write)

    # -- items ------------------------------------------------------------------------------------

    def snapshot_items(
        self, run_id: str, *, by_name: bool = False, only: Collection[int] | None = None
    ) -> list[ActiveInstance]:
        """One pending item per instance active when the run started (of those in `only`, when
        given: a refresh of what changed), taken once (fixes compat Q20).

        Items are created in id order, or in name order for the nightly run (compat 6.3). Later
        callers of the same run (another step) get the same instances back from the items; an
        instance created after the run started never joins it, even when the first snapshot was
        empty. So every step of a run works on one snapshot.
        """

        def snapshot(connection: Connection) -> list[ActiveInstance]:
            run = self.lock_runs(connection, [run_id])[run_id]  # serialises racing steps of one run
            existing = self._item_instances(connection, run_id)
            if existing:
                return existing
            instances = list_active_instances(connection, existing_at=run.started_at)
            if only is not None:
                instances = [instance for instance in instances if instance.id in only]
            if by_name:
                instances.sort(key=lambda instance: (instance.name, instance.id))
            now = self.clock(connection)
            if instances:
                rows = [
                    {
                        "run_id": run_id,
                        "item_type": c.ITEM_TYPE,
                        "item_key": str(instance.id),
                        "item_name": instance.name,
                        "instance_id": instance.id,
                        "status": TaskStatus.PENDING,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for instance in instances
                ]
                connection.execute(insert(self.items), rows)
            connection.execute(
                update(self.runs)
                .where(self.runs.c.run_id == run_id)
                .values(progress_total=len(instances), updated_at=now)
            )
            return self._item_instances(connection, run_id)

        return self._write(snapshot)

    def start_items(self, run_ids: Collection[str], instance_ids: Sequence[int]) -> None:
        """start_item for each: running unless already terminal; started_at kept if set."""
        if not instance_ids or not run_ids:
            return

        def start(connection: Connection) -> None:
            open_runs = self._open_runs(connection, run_ids)
            if not open_runs:
                return
            now = self.clock(connection)
            connection.execute(
                update(self.items)
                .where(
                    self.items.c.run_id.in_(open_runs),
                    self.items.c.item_type == c.ITEM_TYPE,
                    self.items.c.item_key.in_([str(i) for i in instance_ids]),
                    self.items.c.status.in_(IN_PROGRESS),
                )
                .values(
                    status=TaskStatus.RUNNING,
                    started_at=func.coalesce(self.items.c.started_at, now),
                    updated_at=now,
                )
            )

        self._write(start)

    def record_phases(
        self, run_ids: Collection[str], results: Sequence[ItemPhase], expected_phases: Collection[str]
    ) -> dict[str, Progress]:
        """Record each instance's phase results in every open run; an item whose expected phases
        are all in becomes final (replayed as WhaleFall would, compat 6.1). Returns the progress of
        the runs still open. Cancelled or finished items and runs are left alone."""
        expected = set(expected_phases)
        by_instance: dict[int, dict[str, PhaseResult]] = {}
        for result in results:
            by_instance.setdefault(result.instance_id, {})[result.phase] = result.result

        def record(connection: Connection) -> dict[str, Progress]:
            open_runs = self._open_runs(connection, run_ids)
            if not open_runs or not by_instance:
                return {run_id: self._write_progress(connection, run_id) for run_id in open_runs}
            items = self.items
            rows = connection.execute(
                select(items.c.id, items.c.instance_id, items.c.details_json).where(
                    items.c.run_id.in_(open_runs),
                    items.c.item_type == c.ITEM_TYPE,
                    items.c.item_key.in_([str(i) for i in by_instance]),
                    items.c.status.in_(IN_PROGRESS),
                )
            ).all()
            now = self.clock(connection)
            updates = [self._item_update(row, by_instance[row.instance_id], expected, now) for row in rows]
            if updates:
                connection.execute(
                    update(items)
                    # The run row lock keeps a cancel out; the status guard says so once more
                    # (spelled without IN, which executemany cannot take).
                    .where(items.c.id == bindparam("item_id"), or_(*(items.c.status == s for s in IN_PROGRESS)))
                    .values(
                        status=bindparam("new_status"),
                        metrics_json=bindparam("metrics", type_=_JSON_OR_NULL),
                        details_json=bindparam("details", type_=_JSON_OR_NULL),
                        error_message=bindparam("error"),
                        completed_at=bindparam("completed"),
                        updated_at=now,
                    ),
                    updates,
                )
            return {run_id: self._write_progress(connection, run_id) for run_id in open_runs}

        return self._write(record)

    @staticmethod
    def _item_update(row: Any, new: Mapping[str, PhaseResult], expected: set[str], now: datetime) -> dict[str, Any]:
        stored = (row.details_json or {}).get("phases", {})
        phases = {key: PhaseResult.from_json(value) for key, value in stored.items()} | dict(new)
        if not expected <= set(phases):
            details = {"phases": {key: result.to_json() for key, result in sorted(phases.items())}}
            return {
                "item_id": row.id,
                "new_status": TaskStatus.RUNNING,
                "metrics": None,
                "details": details,
                "error": None,
                "completed": None,
            }
        final = replay_phases(phases)
        details = dict(final.details_json)
        if len(phases) > 1:  # compat Q10: every phase's result beside WhaleFall's final payload
            details["phases"] = {key: result.to_json() for key, result in sorted(phases.items())}
        return {
            "item_id": row.id,
            "new_status": final.status,
            "metrics": final.metrics_json,
            "details": details,
            "error": final.error_message,
            "completed": now,
        }

    # -- helpers ------------------------------------------------------------------------------

    def _write(self, work: Callable[[Connection], T]) -> T:
        return in_transaction(self.engine, work)

    def lock_runs(self, connection: Connection, run_ids: Collection[str]) -> dict[str, Any]:
        """The run rows, locked in run_id order: the first step of every write (one lock order)."""
        query = self.dialect.for_update(
            select(self.runs).where(self.runs.c.run_id.in_(sorted(run_ids))).order_by(self.runs.c.run_id)
        )
        return {row.run_id: row for row in connection.execute(query)}

    def _open_runs(self, connection: Connection, run_ids: Collection[str]) -> list[str]:
        return [run_id for run_id, row in self.lock_runs(connection, run_ids).items() if row.status in IN_PROGRESS]

    def items_in(self, connection: Connection, run_id: str) -> list[dict[str, Any]]:
        query = select(self.items).where(self.items.c.run_id == run_id).order_by(self.items.c.id)
        return [dict(row._mapping) for row in connection.execute(query)]

    def _item_instances(self, connection: Connection, run_id: str) -> list[ActiveInstance]:
        rows = connection.execute(
            select(self.items.c.instance_id, self.items.c.item_name)
            .where(self.items.c.run_id == run_id, self.items.c.item_type == c.ITEM_TYPE)
            .order_by(self.items.c.id)
        )
        return [ActiveInstance(id=row.instance_id, name=row.item_name) for row in rows]

    def close_open_items(
        self, connection: Connection, run_id: str, status: TaskStatus, message: str | None, now: datetime
    ) -> int:
        """Every pending or running item of the run becomes `status` (with `message` as its error);
        returns how many."""
        values: dict[str, Any] = {"status": status, "completed_at": now, "updated_at": now}
        if message is not None:
            values["error_message"] = message
        return connection.execute(
            update(self.items)
            .where(self.items.c.run_id == run_id, self.items.c.status.in_(IN_PROGRESS))
            .values(**values)
        ).rowcount

    def count_progress(self, connection: Connection, run_id: str) -> Progress:
        """Counters from the items: completed, and failed-or-cancelled (compat 6.1 finalize_run)."""
        items = self.items
        counts = connection.execute(
            select(
                func.count(),
                func.count(case((items.c.status == TaskStatus.COMPLETED, 1))),
                func.count(case((items.c.status.in_((TaskStatus.FAILED, TaskStatus.CANCELLED)), 1))),
            ).where(items.c.run_id == run_id)
        ).one()
        return Progress(*counts)

    def _write_progress(self, connection: Connection, run_id: str) -> Progress:
        """The counters, written to the run. Only called with the run row locked."""
        progress = self.count_progress(connection, run_id)
        connection.execute(
            update(self.runs)
            .where(self.runs.c.run_id == run_id)
            .values(updated_at=self.clock(connection), **progress.columns())
        )
        return progress
