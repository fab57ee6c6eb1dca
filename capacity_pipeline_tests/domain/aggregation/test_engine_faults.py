"""The engine when the database misbehaves (PostgreSQL): a table locked by another session, a stop
that arrives during a lock wait, an interrupt in the middle of a statement, a host that never
answers, a server restarted in the middle of a batch (a private server: the machine's is shared).
Test-sized timeouts keep each case to a few seconds."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import date

import pytest
from sqlalchemy import Connection, Engine, text

from capacity_pipeline.domain.aggregation.engine import AggregationAborted, Batch, BatchControl, aggregate_period
from capacity_pipeline.domain.model import Outcome, Scope
from capacity_pipeline.domain.periods import PeriodType, Window
from capacity_pipeline.domain.run_center.claims import RunClaims
from capacity_pipeline.domain.run_center.worker_watch import WorkerWatch
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.dialects import ConnectionLimits, ErrorKind
from capacity_pipeline.domain.storage.month_partitions import ensure_month_partitions
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import PrivatePostgres, WhaleFallData, url_of, wait_until

DAY = date(2026, 6, 10)
DAILY = Window(DAY, DAY)
PERIOD_LOCK = f"capacity_pipeline.database_size_aggregations.daily.{DAY}"


def _seed(whalefall: WhaleFallData, instances: int) -> WhaleFallData:
    for instance_id in range(1, instances + 1):
        whalefall.instance(instance_id)
        whalefall.database_stats(instance_id, "app", [(DAY, 100, 90)])
        whalefall.instance_stats(instance_id, [(DAY, 100, 1)])
    # The month partition exists already, so the only lock a batch waits for is the table's.
    ensure_month_partitions(whalefall.engine, ["database_size_aggregations"], [DAY])
    return whalefall


@pytest.fixture
def five_instances(pg_whalefall: WhaleFallData) -> WhaleFallData:
    return _seed(pg_whalefall, 5)


@contextmanager
def table_locked(engine: Engine, table: str = "database_size_aggregations") -> Iterator[Connection]:
    """Another session holds ACCESS EXCLUSIVE on the table for the length of the block."""
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield connection
        finally:
            transaction.rollback()


def _engine(engine: Engine, **limits: float) -> Engine:
    return make_engine(url_of(engine), ConnectionLimits(**limits))


def _period_lock_is_free(engine: Engine) -> bool:
    """No session holds the period's advisory lock (a cancelled run's backend let it go)."""
    with engine.connect() as connection:
        free = connection.execute(text("SELECT pg_try_advisory_lock(hashtext(:key))"), {"key": PERIOD_LOCK}).scalar()
        if free:
            connection.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": PERIOD_LOCK})
        return bool(free)


def _our_waiting_sessions(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'capacity_pipeline' "
                "AND wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar()


def test_a_locked_table_ends_the_run_at_the_lock_timeout_instead_of_per_instance_retries(pg_engine, five_instances):
    engine = _engine(pg_engine, lock_timeout=1.0)
    with table_locked(pg_engine):
        started = time.monotonic()
        with pytest.raises(AggregationAborted) as aborted:
            aggregate_period(engine, PeriodType.DAILY, DAILY, scope=Scope.DATABASE, batch_size=5)
        elapsed = time.monotonic() - started

    assert aborted.value.kind is ErrorKind.LOCK_TIMEOUT
    assert "lock timeout while writing daily 2026-06-10..2026-06-10" in str(aborted.value)
    assert elapsed < 4  # one lock timeout, not one per instance
    assert five_instances.rows("database_size_aggregations") == []
    engine.dispose()


def test_a_stop_during_a_lock_wait_ends_the_wait_and_frees_the_period(pg_engine, five_instances):
    engine = _engine(pg_engine, lock_timeout=60.0)
    control, outcome = BatchControl(), {}
    with table_locked(pg_engine):
        worker = threading.Thread(
            target=lambda: outcome.update(
                report=aggregate_period(engine, PeriodType.DAILY, DAILY, scope=Scope.DATABASE, control=control)
            )
        )
        worker.start()
        wait_until(lambda: _our_waiting_sessions(pg_engine), 10, "the batch waiting on the lock")
        stopped_at = time.monotonic()
        control.stop("cancelled in the run center")
        worker.join(timeout=10)
        assert not worker.is_alive() and time.monotonic() - stopped_at < 5
        assert outcome["report"].stopped and outcome["report"].outcomes == []
        assert _our_waiting_sessions(pg_engine) == 0  # the statement was cancelled on the server
        assert _period_lock_is_free(pg_engine)  # while the other session still holds its lock
    engine.dispose()


class Interrupt(BaseException):
    """What a terminated Dagster run raises in its worker: not an Exception, not KeyboardInterrupt."""


def test_an_interrupt_in_the_middle_of_a_statement_cancels_it_on_the_server(pg_engine, five_instances):
    """As in a Dagster run worker: a signal whose handler raises an interrupt, in the main thread,
    while the batch statement waits on the server."""
    engine = _engine(pg_engine, lock_timeout=60.0)

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise Interrupt

    def send_signal_once_waiting() -> None:
        wait_until(lambda: _our_waiting_sessions(pg_engine), 10, "the batch waiting on the lock")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, raise_interrupt)
    try:
        with table_locked(pg_engine):
            threading.Thread(target=send_signal_once_waiting, daemon=True).start()
            with pytest.raises(Interrupt):
                aggregate_period(engine, PeriodType.DAILY, DAILY, scope=Scope.DATABASE)
            wait_until(lambda: _our_waiting_sessions(pg_engine) == 0, 5, "the server-side statement to end")
            assert _period_lock_is_free(pg_engine)  # while the other session still holds its lock
    finally:
        signal.signal(signal.SIGUSR1, previous)
        engine.dispose()


def test_the_watch_reports_a_lock_wait_while_it_lasts_and_names_the_holder(pg_engine, five_instances):
    engine = _engine(pg_engine, lock_timeout=60.0)
    control, reports, warnings = BatchControl(), [], []
    RunClaims(pg_engine).adopt("watched-task-run", "watched-dagster-run")
    watch = WorkerWatch(
        engine, "watched-dagster-run", control, interval=0.5, report=reports.append, warn=warnings.append
    )
    with watch, table_locked(pg_engine) as holder:
        holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        # The holder's last statement carries data; pg_stat_activity shows its text to anyone.
        holder.exec_driver_sql("SELECT 'salary of employee 4711: 98000' AS payroll")
        worker = threading.Thread(
            target=aggregate_period,
            args=(engine, PeriodType.DAILY, DAILY),
            kwargs={"scope": Scope.DATABASE, "control": control},
        )
        worker.start()
        wait_until(lambda: len(reports) >= 2, 15, "two reports of the lock wait")
        control.stop("test over")
        worker.join(timeout=10)

    assert warnings == []
    assert "database_size_aggregations" in reports[-1] and str(holder_pid) in reports[-1]
    # Who holds it and how, never what it ran (it may quote data): pid, application, table, lock modes.
    assert re.fullmatch(
        rf"waiting \d+ s for a lock on database_size_aggregations \((RowExclusive|AccessShare)Lock\) "
        rf"held by pid {holder_pid} \(capacity_pipeline, AccessExclusiveLock\)",
        reports[-1],
    ), reports[-1]
    assert control.last_wait == reports[-1]
    beats = RunClaims(pg_engine).last_beats(["watched-dagster-run"])
    assert list(beats) == ["watched-dagster-run"]
    engine.dispose()


def test_a_host_that_accepts_but_never_answers_fails_at_the_connect_timeout(capsys):
    from capacity_pipeline.cli import main

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        code = main(
            [
                "aggregate",
                "--period",
                "daily",
                "--date",
                "2026-06-10",
                "--connect-timeout",
                "2",
                "--db-url",
                f"postgresql://nobody:secret@127.0.0.1:{port}/whalefall",
            ]
        )
        elapsed = time.monotonic() - started

    error = capsys.readouterr().err
    assert code == 1 and elapsed < 8
    assert error == (
        f"capacity-pipeline aggregate: failed: cannot use postgresql://nobody:***@127.0.0.1:{port}/whalefall: "
        "connection timeout expired\n"
    )


# -- a server restarted under the run --------------------------------------------------------------


@pytest.fixture
def restartable(private_postgres: PrivatePostgres) -> Iterator[tuple[PrivatePostgres, Engine]]:
    """Three instances in a new database on the private server (running), and an engine on it."""
    engine = make_engine(private_postgres.new_database(), ConnectionLimits(connect_timeout=2))
    create_schema(engine)
    _seed(WhaleFallData(engine), 3)
    yield private_postgres, engine
    engine.dispose()


@contextmanager
def period_locked_after_the_first_batch(engine: Engine) -> Iterator[Callable[[Batch], None]]:
    """An after_batch hook: once batch 1 is written, another session takes the period's lock, so
    batch 2 waits inside its transaction until that session goes away."""
    holder: list[Connection] = []

    def after_batch(batch: Batch) -> None:
        if batch.number == 1:
            holder.append(engine.connect())
            holder[0].execute(text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": PERIOD_LOCK})

    try:
        yield after_batch
    finally:
        for connection in holder:
            with suppress(Exception):  # the restart killed its session
                connection.close()


def test_a_server_restart_in_the_middle_of_a_batch_is_survived_by_reconnecting(restartable):
    server, engine = restartable
    with period_locked_after_the_first_batch(engine) as after_batch, ThreadPoolExecutor(1) as worker:
        run = worker.submit(
            aggregate_period,
            engine,
            PeriodType.DAILY,
            DAILY,
            scope=Scope.DATABASE,
            batch_size=1,
            after_batch=after_batch,
            reconnect_within=30,
        )
        wait_until(lambda: _our_waiting_sessions(engine), 10, "batch 2 waiting inside its transaction")
        server.restart()  # a fast shutdown terminates batch 2's session (and the lock holder's)
        report = run.result(timeout=60)

    assert [(o.instance.id, o.status) for o in report.outcomes] == [(i, Outcome.COMPLETED) for i in (1, 2, 3)]
    rows = WhaleFallData(engine).rows("database_size_aggregations")
    assert [(row["instance_id"], row["avg_size_mb"]) for row in rows] == [(1, 100), (2, 100), (3, 100)]


def test_a_server_that_stays_down_ends_the_run_once_the_reconnect_budget_is_spent(restartable):
    server, engine = restartable

    def stop_after_the_first_batch(batch: Batch) -> None:
        if batch.number == 1:
            server.stop()

    started = time.monotonic()
    with pytest.raises(AggregationAborted) as aborted:
        aggregate_period(
            engine,
            PeriodType.DAILY,
            DAILY,
            scope=Scope.DATABASE,
            batch_size=1,
            after_batch=stop_after_the_first_batch,
            reconnect_within=1.5,
        )
    elapsed = time.monotonic() - started

    assert aborted.value.kind is ErrorKind.CONNECTION
    message = str(aborted.value)
    assert message.startswith("connection lost while writing daily 2026-06-10..2026-06-10: ")
    assert message.endswith("(still lost after reconnecting for 1.5 s)"), message
    assert elapsed < 10  # the budget, not the statement timeout (600 s by default)
