"""Which worker run does which TaskRun's work, and whether that worker is alive.

A trigger (a `running` TaskRun the API wrote, as WhaleFall's start_run writes it) is linked to a
claim key when a launcher picks it up; equal requests (same scope, period and partition) share a
claim key while its run has not started. The run's first step claims every TaskRun of its key at
once, in one transaction, after which nothing joins the run any more: a launcher that comes later
starts a new one. Runs not started by a trigger (the nightly job, a materialization) claim the
TaskRun they create themselves. While a run works, its steps beat on the links, so a run whose
worker died can be told from one that is merely slow.

Times come from one clock, the database's (storage/clock.py): a host whose clock lags can neither
make a fresh request look stale nor a live worker look dead. (A trigger written by WhaleFall's own
route carries WhaleFall's clock in started_at: keep that host on time.)
"""

from __future__ import annotations

import os
import resource
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select, update

from capacity_pipeline.domain.model import IN_PROGRESS, TaskStatus
from capacity_pipeline.domain.run_center.settle import Failed, settle
from capacity_pipeline.domain.storage.clock import Clock, database_clock
from capacity_pipeline.domain.storage.database import in_transaction
from capacity_pipeline.domain.storage.dialects import dialect_of
from capacity_pipeline.domain.storage.tables import tables_for


@dataclass(frozen=True)
class WorkerStats:
    """A worker process as it reports itself at a heartbeat."""

    pid: int
    memory_mib: int
    machine_memory_mib: int

    @classmethod
    def of_this_process(cls) -> WorkerStats:
        page = os.sysconf("SC_PAGE_SIZE")
        machine = os.sysconf("SC_PHYS_PAGES") * page
        try:
            with open("/proc/self/statm") as statm:
                resident = int(statm.read().split()[1]) * page
        except OSError:  # not Linux: the peak instead (kilobytes on Linux, bytes on macOS)
            resident = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return cls(os.getpid(), resident // 2**20, machine // 2**20)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class RunClaims:
    """Reads and writes `capacity_task_run_links`, the pipeline's own table beside the run center."""

    def __init__(self, engine: Engine, clock: Clock = database_clock) -> None:
        self.engine = engine
        self.clock = clock
        self.dialect = dialect_of(engine)
        tables = tables_for(engine).tables
        self.links = tables["capacity_task_run_links"]
        self.runs = tables["task_runs"]

    def now(self) -> datetime:
        """The time on the clock every writer of the links uses."""
        with self.engine.connect() as connection:
            return as_utc(self.clock(connection))

    # -- triggers ---------------------------------------------------------------------------------

    def unclaimed_triggers(self, task_key: str) -> list[dict[str, Any]]:
        """Open TaskRuns of `task_key` that no launcher has picked up yet, oldest first."""
        runs, links = self.runs, self.links
        query = (
            select(runs)
            .outerjoin(links, links.c.task_run_id == runs.c.run_id)
            .where(runs.c.task_key == task_key, runs.c.status.in_(IN_PROGRESS), links.c.task_run_id.is_(None))
            .order_by(runs.c.id)
        )
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def expire_unclaimed(self, triggers: list[dict[str, Any]], older_than: timedelta, message: str) -> set[str]:
        """Fail the `triggers` (from unclaimed_triggers) that nobody picked up within `older_than`
        (is a Dagster daemon running?); returns their run ids, none of which may be launched now.
        Their age is measured on the database's clock, which wrote their started_at."""
        if not triggers:
            return set()
        deadline = self.now() - older_than
        expired = {trigger["run_id"] for trigger in triggers if as_utc(trigger["started_at"]) < deadline}
        for run_id in expired:
            settle(self.engine, run_id, Failed(message), clock=self.clock)  # one cancelled meanwhile stays so
        return expired

    def link(self, task_run_id: str, claim_key: str, request_key: str | None = None) -> bool:
        """Give the TaskRun to the run of `claim_key`, unless that run has already claimed its
        TaskRuns (then it has started, and the caller needs another run). True if linked."""

        def link(connection: Connection) -> bool:
            self.dialect.serialise(connection, f"capacity_pipeline.claim.{claim_key}")
            claimed = connection.execute(
                select(func.count()).where(self.links.c.claim_key == claim_key, self.links.c.claimed_at.is_not(None))
            ).scalar()
            if claimed:
                return False
            statement = self.dialect.insert_ignoring_conflicts(self.links).values(
                task_run_id=task_run_id, claim_key=claim_key, request_key=request_key, created_at=self.clock(connection)
            )
            inserted = statement.on_conflict_do_nothing(index_elements=["task_run_id"]).returning(
                self.links.c.task_run_id
            )
            return connection.execute(inserted).first() is not None

        return in_transaction(self.engine, link)

    def unclaimed_groups(self) -> dict[str, dict[str, Any]]:
        """Claim keys whose run has not claimed them yet, with their request key and open TaskRuns."""
        runs, links = self.runs, self.links
        query = (
            select(links.c.claim_key, links.c.request_key, links.c.task_run_id)
            .join(runs, runs.c.run_id == links.c.task_run_id)
            .where(links.c.claimed_at.is_(None), runs.c.status.in_(IN_PROGRESS))
            .order_by(runs.c.id)
        )
        groups: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                group = groups.setdefault(row.claim_key, {"request_key": row.request_key, "task_run_ids": []})
                group["task_run_ids"].append(row.task_run_id)
        return groups

    # -- workers ----------------------------------------------------------------------------------

    def claim(self, claim_key: str, run_id: str) -> list[str]:
        """The TaskRuns of `claim_key` that run `run_id` now holds; [] when another run claimed
        them first (a re-execution inherits its original's tags, not its TaskRuns)."""

        def claim(connection: Connection) -> list[str]:
            self.dialect.serialise(connection, f"capacity_pipeline.claim.{claim_key}")
            now = self.clock(connection)
            connection.execute(
                update(self.links)
                .where(self.links.c.claim_key == claim_key, self.links.c.claimed_at.is_(None))
                .values(dagster_run_id=run_id, claimed_at=now, heartbeat_at=now)
            )
            rows = connection.execute(
                select(self.links.c.task_run_id)
                .where(self.links.c.claim_key == claim_key, self.links.c.dagster_run_id == run_id)
                .order_by(self.links.c.task_run_id)
            )
            return [row.task_run_id for row in rows]

        return in_transaction(self.engine, claim)

    def adopt(self, task_run_id: str, run_id: str) -> bool:
        """Link a TaskRun straight to run `run_id` (its own, or one named by the run's tags); True
        when the run holds it, False when another run did its work already."""

        def adopt(connection: Connection) -> bool:
            now = self.clock(connection)
            statement = self.dialect.insert_ignoring_conflicts(self.links).values(
                task_run_id=task_run_id,
                claim_key=run_id,
                dagster_run_id=run_id,
                claimed_at=now,
                heartbeat_at=now,
                created_at=now,
            )
            connection.execute(statement.on_conflict_do_nothing(index_elements=["task_run_id"]))
            holder = connection.execute(
                select(self.links.c.dagster_run_id, self.links.c.claim_key).where(
                    self.links.c.task_run_id == task_run_id
                )
            ).one()
            if holder.dagster_run_id is None:  # linked by a launcher to a run that never started
                connection.execute(
                    update(self.links)
                    .where(self.links.c.task_run_id == task_run_id, self.links.c.dagster_run_id.is_(None))
                    .values(dagster_run_id=run_id, claimed_at=now, heartbeat_at=now)
                )
                return True
            return holder.dagster_run_id == run_id

        return in_transaction(self.engine, adopt)

    def beat(self, run_id: str, worker: WorkerStats | None = None) -> None:
        """The run's worker is alive (and, when given, how it is doing)."""
        values: dict[str, Any] = {}
        if worker is not None:
            values |= {
                "worker_pid": worker.pid,
                "worker_memory_mib": worker.memory_mib,
                "machine_memory_mib": worker.machine_memory_mib,
            }
        with self.engine.begin() as connection:
            values["heartbeat_at"] = self.clock(connection)
            connection.execute(update(self.links).where(self.links.c.dagster_run_id == run_id).values(**values))

    def last_worker(self, run_id: str) -> tuple[datetime, WorkerStats] | None:
        """When the run's worker last beat, and what it reported then."""
        query = (
            select(self.links.c.heartbeat_at, self.links.c.worker_pid, self.links.c.worker_memory_mib,
                   self.links.c.machine_memory_mib)
            .where(self.links.c.dagster_run_id == run_id, self.links.c.worker_pid.is_not(None))
            .order_by(self.links.c.heartbeat_at.desc())
            .limit(1)
        )  # fmt: skip
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return as_utc(row.heartbeat_at), WorkerStats(row.worker_pid, row.worker_memory_mib, row.machine_memory_mib)

    def task_runs_of(self, run_id: str) -> list[str]:
        query = select(self.links.c.task_run_id).where(self.links.c.dagster_run_id == run_id)
        with self.engine.connect() as connection:
            return sorted(row.task_run_id for row in connection.execute(query))

    def last_beats(self, run_ids: Collection[str]) -> dict[str, datetime]:
        """When each run's worker last showed life (runs that never claimed anything are absent)."""
        if not run_ids:
            return {}
        query = (
            select(self.links.c.dagster_run_id, func.max(self.links.c.heartbeat_at).label("beat"))
            .where(self.links.c.dagster_run_id.in_(list(run_ids)), self.links.c.heartbeat_at.is_not(None))
            .group_by(self.links.c.dagster_run_id)
        )
        with self.engine.connect() as connection:
            return {row.dagster_run_id: as_utc(row.beat) for row in connection.execute(query)}

    def open_task_runs(self, task_keys: Collection[str]) -> list[dict[str, Any]]:
        """Open TaskRuns of these task keys with their link (claim key, Dagster run id; None if unlinked)."""
        runs, links = self.runs, self.links
        query = (
            select(runs, links.c.claim_key, links.c.dagster_run_id)
            .outerjoin(links, links.c.task_run_id == runs.c.run_id)
            .where(runs.c.task_key.in_(list(task_keys)), runs.c.status.in_(IN_PROGRESS))
            .order_by(runs.c.id)
        )
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def cancelled_unclaimed(self, since: datetime) -> dict[str, list[str]]:
        """Claim keys not yet claimed whose TaskRuns were all cancelled (updated since `since`)."""
        runs, links = self.runs, self.links
        query = (
            select(links.c.claim_key, runs.c.status)
            .join(runs, runs.c.run_id == links.c.task_run_id)
            .where(
                links.c.claimed_at.is_(None),
                links.c.claim_key.in_(
                    select(links.c.claim_key)
                    .join(runs, runs.c.run_id == links.c.task_run_id)
                    .where(and_(runs.c.status == TaskStatus.CANCELLED, runs.c.updated_at >= since))
                ),
            )
        )
        groups: dict[str, list[str]] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                groups.setdefault(row.claim_key, []).append(row.status)
        return {key: statuses for key, statuses in groups.items() if set(statuses) == {TaskStatus.CANCELLED}}
