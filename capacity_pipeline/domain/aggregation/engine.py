"""The one batching loop behind every path (asset, nightly job, command line): WhaleFall's numbers,
computed set-based inside the database.

Instances go in batches (default 250); per batch, each window is written in one transaction that
runs its levels' statements (level_sql.py). A batch that fails on its data is rolled back whole and
retried one instance at a time, so one bad instance fails alone (fixes compat Q11) and committed
batches stay committed. A failure of the database as a whole (a lock or statement timeout, a
cancel) stops the work instead: retrying instance by instance cannot help. A lost connection (the
server restarted) is retried, the batch whole, with a backoff, for up to `reconnect_within`
seconds (the statement timeout, for the callers): a batch only upserts what it computes, so
running it twice writes the same rows.

The caller sees every batch before and after it is written (items, progress, cancellation), and
a `BatchControl` lets another thread watch the session in use and stop the work at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from capacity_pipeline.domain.aggregation.level_sql import level_statements
from capacity_pipeline.domain.aggregation.refresh import record_marks
from capacity_pipeline.domain.model import (
    ActiveInstance,
    AggregationReport,
    InstanceOutcome,
    Scope,
    WindowPlan,
)
from capacity_pipeline.domain.periods import PeriodType, Window
from capacity_pipeline.domain.samples.changes import last_change
from capacity_pipeline.domain.samples.instances import list_active_instances
from capacity_pipeline.domain.storage.database import retrying
from capacity_pipeline.domain.storage.dialects import ErrorKind, SqlDialect, dialect_of, first_line
from capacity_pipeline.domain.storage.month_partitions import ensure_month_partitions

DEFAULT_BATCH_SIZE = 250


class AggregationStopped(Exception):
    """The work was stopped through its BatchControl (a cancel); the batch in progress was rolled back."""


class AggregationAborted(RuntimeError):
    """The database refused the work as a whole; `kind` says how (a timeout, a cancel, a lost connection)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class BatchControl:
    """Shared by the thread that runs batches and a watcher thread.

    The watcher sees which database session is busy and for how long, and may `stop` the work:
    the engine stops before its next batch, and a statement in progress is cancelled on the server
    at once (so a stop also ends a long lock wait).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: tuple[SqlDialect, Connection, int | None, float] | None = None
        self.stop_reason: str | None = None
        self.last_wait: str | None = None  # what the watcher last saw the session waiting for

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            if self._busy is not None:
                dialect, connection, _, _ = self._busy
                with suppress(Exception):  # the statement may just have ended; stopping goes on
                    dialect.cancel(connection)

    def busy_session(self) -> tuple[int, float] | None:
        """(server session id, seconds busy) of the batch in progress, if the dialect has sessions."""
        with self._lock:
            if self._busy is None or self._busy[2] is None:
                return None
            return self._busy[2], time.monotonic() - self._busy[3]

    @contextmanager
    def session(self, dialect: SqlDialect, connection: Connection, backend: int | None) -> Iterator[None]:
        """Mark `connection` (server session `backend`) busy with a batch for the watcher."""
        with self._lock:
            if self.stop_reason is not None:
                raise AggregationStopped(self.stop_reason)
            self._busy = (dialect, connection, backend, time.monotonic())
            self.last_wait = None
        try:
            yield
        finally:
            with self._lock:
                self._busy = None


@dataclass
class Batch:
    """One written batch: its instances and, per window, what happened to each instance."""

    number: int
    total: int
    instances: Sequence[ActiveInstance]
    outcomes: dict[WindowPlan, list[InstanceOutcome]]


BeforeBatch = Callable[[Sequence[ActiveInstance]], None]
AfterBatch = Callable[[Batch], bool | None]  # returning False stops the work


def aggregate_windows(
    engine: Engine,
    plans: Sequence[WindowPlan],
    *,
    instances: Sequence[ActiveInstance] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    before_batch: BeforeBatch | None = None,
    after_batch: AfterBatch | None = None,
    control: BatchControl | None = None,
    reconnect_within: float = 0.0,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    changes_through: int | None = None,
) -> list[AggregationReport]:
    """Aggregate each window of `plans` for the given (default: active) instances; one report per plan.

    Batches go outside, windows inside: a batch's instances are done in every window before the
    next batch starts, so its items can be settled at once. A connection lost while a batch (or
    the month partitions) is written is retried for up to `reconnect_within` seconds.

    Each window written without a failure is marked as following every sample change up to
    `changes_through` (refresh.py): the caller says how far its instances cover the changes; with
    every active instance the latest change logged before the work is taken.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    started = time.perf_counter()
    targets = list_active_instances(engine) if instances is None else list(instances)
    if changes_through is None and instances is None:
        changes_through = last_change(engine)  # before any sample is read
    batches = [targets[first : first + batch_size] for first in range(0, len(targets), batch_size)]
    reports = {plan: AggregationReport(plan, len(targets), batches_total=len(batches)) for plan in plans}
    dialect = dialect_of(engine)
    if targets:
        _ensure_partitions(engine, dialect, plans, reconnect_within)
    writers = [_WindowWriter(engine, dialect, plan, now, control, reconnect_within) for plan in plans]
    setup = time.perf_counter() - started  # shared by the plans: each report counts it once
    try:
        for number, batch in enumerate(batches, start=1):
            if control is not None and control.stop_reason is not None:
                raise AggregationStopped(control.stop_reason)
            if before_batch is not None:
                before_batch(batch)
            written = Batch(number, len(batches), batch, {writer.plan: writer.write_timed(batch) for writer in writers})
            for plan, outcomes in written.outcomes.items():
                reports[plan].outcomes.extend(outcomes)
                reports[plan].batches_done += 1
            if after_batch is not None and after_batch(written) is False:
                raise AggregationStopped("stopped after a batch")
    except AggregationStopped:
        for report in reports.values():
            report.stopped = report.batches_done < report.batches_total
    for writer in writers:  # each plan's own time, not the whole run's
        reports[writer.plan].seconds = setup + writer.seconds
    if changes_through is not None:
        complete = [report.plan for report in reports.values() if not report.stopped and not report.failures]
        record_marks(engine, [(level, plan) for plan in complete for level in plan.levels], changes_through)
    return list(reports.values())


def aggregate_period(
    engine: Engine,
    period_type: PeriodType,
    window: Window,
    *,
    scope: Scope = Scope.ALL,
    corrected_quarter: bool = False,
    **options: object,
) -> AggregationReport:
    """One window at the scope's levels (the command line's `aggregate`); options as aggregate_windows."""
    plan = WindowPlan(period_type, window, scope.levels, corrected_quarter)
    [report] = aggregate_windows(engine, [plan], **options)  # type: ignore[arg-type]
    return report


class _WindowWriter:
    """Writes one window for a batch per transaction; isolates a batch that fails on its data."""

    def __init__(
        self,
        engine: Engine,
        dialect: SqlDialect,
        plan: WindowPlan,
        now: Callable[[], datetime],
        control: BatchControl | None,
        reconnect_within: float,
    ) -> None:
        self.engine = engine
        self.dialect = dialect
        self.plan = plan
        self.now = now
        self.control = control
        self.reconnect_within = reconnect_within
        self.seconds = 0.0  # spent writing this window, over all batches
        self.statements = {level: level_statements(dialect.name, level) for level in plan.levels}
        self.parameters = {
            "period_type": plan.period.value,
            "start": plan.window.start,
            "end": plan.window.end,
            "previous_start": plan.previous.start,
            "previous_end": plan.previous.end,
        }
        # Writers of one period and level are serialised for the rest of their transaction (compat Q17).
        self.lock_keys = {
            level: f"capacity_pipeline.{level.table}.{plan.period.value}.{plan.window.start}" for level in plan.levels
        }

    def write_timed(self, batch: Sequence[ActiveInstance]) -> list[InstanceOutcome]:
        started = time.perf_counter()
        try:
            return self.write(batch)
        finally:
            self.seconds += time.perf_counter() - started

    def write(self, batch: Sequence[ActiveInstance]) -> list[InstanceOutcome]:
        try:
            return retrying(
                self.dialect, lambda: self._write_in_one_transaction(batch), reconnect_within=self.reconnect_within
            )
        except SQLAlchemyError as failure:
            if self.control is not None and self.control.stop_reason is not None:
                raise AggregationStopped(self.control.stop_reason) from None
            kind = self.dialect.classify(failure)
            # A data error, or a conflict that outlived its retries: split the batch, so it fails alone.
            if kind not in (ErrorKind.DATA, ErrorKind.RETRY):
                raise AggregationAborted(kind, self._explain(kind, failure)) from None
            if len(batch) == 1:
                return [InstanceOutcome(batch[0], error=first_line(failure))]
        return [outcome for instance in batch for outcome in self.write([instance])]

    def _explain(self, kind: ErrorKind, error: SQLAlchemyError) -> str:
        where = f"{self.plan.period.value} {self.plan.window}"
        seen = self.control.last_wait if self.control is not None else None
        if kind is ErrorKind.CONNECTION and self.reconnect_within > 0:
            seen = f"still lost after reconnecting for {self.reconnect_within:g} s"
        return f"{kind.value} while writing {where}: {first_line(error)}" + (f" ({seen})" if seen else "")

    def _write_in_one_transaction(self, batch: Sequence[ActiveInstance]) -> list[InstanceOutcome]:
        outcomes = {instance.id: InstanceOutcome(instance) for instance in batch}
        parameters = {**self.parameters, "ids": [instance.id for instance in batch], "now": self.now()}
        with self.engine.connect() as connection:
            backend = self.dialect.backend_id(connection)
            watched = self.control.session(self.dialect, connection, backend) if self.control else nullcontext()
            with watched:
                transaction = connection.begin()
                try:
                    self.dialect.begin_batch(connection)
                    for level, statements in self.statements.items():
                        self.dialect.serialise(connection, self.lock_keys[level])  # compat Q17
                        for statement in statements[:-1]:
                            connection.execute(statement, parameters)
                        counts = self.dialect.per_instance_counts(connection.execute(statements[-1], parameters))
                        for instance_id, rows, records in counts:
                            outcomes[instance_id].rows_written[level] = rows
                            outcomes[instance_id].records_read[level] = records
                    transaction.commit()
                except Exception:
                    transaction.rollback()
                    raise
                except BaseException:
                    # An interrupt (a terminated run): the driver drops its connection but the server may
                    # go on running (or waiting in) the statement, holding its locks. Cancel it there.
                    _abandon(self.engine, self.dialect, connection, backend)
                    raise
        for outcome in outcomes.values():
            for level in self.statements:
                outcome.rows_written.setdefault(level, 0)
                outcome.records_read.setdefault(level, 0)
        return list(outcomes.values())


def _ensure_partitions(
    engine: Engine, dialect: SqlDialect, plans: Sequence[WindowPlan], reconnect_within: float
) -> None:
    """The month partitions the plans write into (compat Q16); a locked parent aborts like a batch."""
    tables = sorted({level.table for plan in plans for level in plan.levels})
    months = [plan.window.start for plan in plans]
    try:  # creating what is missing may run twice
        retrying(dialect, lambda: ensure_month_partitions(engine, tables, months), reconnect_within=reconnect_within)
    except SQLAlchemyError as error:
        kind = dialect.classify(error)
        if kind is ErrorKind.DATA:
            raise
        raise AggregationAborted(kind, f"{kind.value} while creating month partitions: {first_line(error)}") from None


def _abandon(engine: Engine, dialect: SqlDialect, connection: Connection, backend: int | None) -> None:
    if backend is not None:
        with suppress(Exception):  # best effort: the interrupt goes on either way
            dialect.cancel_backend(engine, backend)
    with suppress(Exception):
        connection.invalidate()
