"""Everything that differs between PostgreSQL and SQLite, behind one object per dialect.

The shape follows Dagster's own storage (a SQL base class, a PostgreSQL subclass): callers ask
`dialect_of(engine)` and never branch on the dialect's name. What differs:

* WhaleFall's Python arithmetic as SQL fragments (compat Q2, Q3). PostgreSQL does it in pure SQL on
  float8; SQLite calls the reference Python functions registered on each connection (sqlmath).
* How a batch is written: PostgreSQL computes rows with a parallel-capable CREATE TEMP TABLE AS
  and upserts from it, under an advisory lock per period and level (compat Q17); SQLite runs one
  INSERT ... SELECT under its database-wide write lock.
* Connections: timeouts, cancelling a statement from another thread, what a waiting session
  waits for, and which errors mean "retry" rather than "this instance is broken".
* Month partitions (compat Q16): PostgreSQL's catalog look-ups and DDL; SQLite has none.

`SqlDialect` declares the contract with abstract methods, as Dagster's `SqlRunStorage` does: a
method with one portable implementation has it in the base class, every other one is written out
by each dialect (a dialect missing one cannot be instantiated).
"""

from __future__ import annotations

import io
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import psycopg
from sqlalchemy import Connection, Engine, Select, Table, TextClause, bindparam, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from capacity_pipeline.domain.storage import sqlmath

if TYPE_CHECKING:
    import pandas as pd


DAY_BITS = 11  # a series' days fit in 11 bits: at most 2048 days of history (PostgreSQL's packing)


@dataclass(frozen=True)
class DailySeries:
    """Series read from the database: their keys, and per sample the series' index, day and size."""

    keys: list[tuple[int, str | None]]  # (instance_id, database_name)
    index: np.ndarray
    day: np.ndarray
    size: np.ndarray

    @classmethod
    def empty(cls) -> DailySeries:
        nothing = np.zeros(0, dtype=np.int64)
        return cls([], nothing, nothing, np.zeros(0))


@dataclass(frozen=True)
class ConnectionLimits:
    """How long any database operation may wait (seconds); every connection gets them."""

    connect_timeout: float = 10.0
    statement_timeout: float = 600.0
    lock_timeout: float = 60.0


class ErrorKind(Enum):
    """What a database error means for the work in progress."""

    RETRY = "retry"  # deadlock or serialization failure: the same transaction may simply be run again
    LOCK_TIMEOUT = "lock timeout"
    STATEMENT_TIMEOUT = "statement timeout"
    CANCELLED = "cancelled"
    CONNECTION = "connection lost"
    DATA = "data"  # anything else: a problem of the rows at hand (compat Q11: isolate the instance)


def first_line(error: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's statement dump (which can be huge)."""
    original = getattr(error, "orig", None) or error
    message = str(original).strip()
    return message.splitlines()[0] if message else type(error).__name__


class SqlDialect(ABC):
    """The operations whose SQL or driver calls differ by database; see the subclasses."""

    name: ClassVar[str]
    partitions_by_month: ClassVar[bool]  # the capacity tables are range-partitioned by month
    now_sql: ClassVar[str]  # the server-side "now" of column defaults

    # -- WhaleFall's Python arithmetic (sqlmath) ------------------------------------------------

    @abstractmethod
    def as_float(self, expr: str) -> str:
        """Python float(expr) of an integer-valued expression."""

    @abstractmethod
    def trunc_int(self, expr: str) -> str:
        """Python int(x) of a float: truncation toward zero, as a bigint."""

    @abstractmethod
    def avg_truncated(self, column: str, where: str) -> str:
        """int(AVG(column)) over the rows `where` holds (compat 4.1); NULL over no values."""

    @abstractmethod
    def avg_as_float(self, column: str, where: str) -> str:
        """float(AVG(column)) over the rows `where` holds, as WhaleFall's driver hands it over."""

    @abstractmethod
    def py_round2(self, x: str) -> str:
        """Python round(x, 2) of a float8, as a numeric with two decimals (compat Q3)."""

    @abstractmethod
    def pg_numeric2(self, x: str) -> str:
        """A float8 stored into numeric(10,2): PostgreSQL rounds half away from zero (compat 4.2)."""

    @abstractmethod
    def text_hash(self, expr: str) -> str:
        """A 32-bit hash of a text expression (for data versions, not for security)."""

    # -- writing a batch ------------------------------------------------------------------------

    @abstractmethod
    def in_batch(self) -> str:
        """The SQL condition "instance_id is one of the batch's :ids"."""

    def window_columns(self) -> str:
        return ":period_type AS period_type, :start AS period_start, :end AS period_end"

    def timestamp_columns(self) -> str:
        return ":now AS calculated_at, :now AS created_at"

    @abstractmethod
    def upsert_statements(
        self, ctes: str, final: str, upsert: str, records_read: str, temporary: str
    ) -> list[TextClause]:
        """A level's statements; the last one yields the per-instance counts (see per_instance_counts)."""

    @abstractmethod
    def per_instance_counts(self, result: Any) -> list[tuple[int, int, int]]:
        """(instance_id, rows written, records read) from the last statement's result."""

    @abstractmethod
    def begin_batch(self, connection: Connection) -> None:
        """Per-transaction settings of a set-based pass (an aggregation or forecast batch, an observation)."""

    def begin_comparison(self, connection: Connection) -> None:
        """Per-transaction settings of an observation, whose joins compare two whole sets."""
        self.begin_batch(connection)

    def bulk_insert(self, engine: Engine, table: Table, frame: pd.DataFrame) -> None:
        """Many rows at once (synthetic data): plain executemany where nothing faster exists."""
        records = frame.astype(object).where(frame.notna(), None)
        columns = list(frame.columns)
        with engine.begin() as connection:
            connection.execute(
                table.insert(), [dict(zip(columns, row, strict=True)) for row in records.itertuples(index=False)]
            )

    @abstractmethod
    def analyze(self, engine: Engine, tables: Sequence[str]) -> None:
        """Refresh the planner's statistics after a bulk load."""

    # -- the forecasts' series ------------------------------------------------------------------

    @abstractmethod
    def day_offset(self, column: str, origin: str) -> str:
        """Whole days from the date parameter `:origin` to the date `column`, as an integer."""

    @abstractmethod
    def date_plus_days(self, column: str, days: str) -> str:
        """The date `days` (an integer expression) after the date `column`."""

    def daily_series(self, connection: Connection, samples: str, params: dict[str, Any]) -> DailySeries:
        """Every series of `samples`, a SELECT of (instance_id, database_name, day, size_mb) with at most
        one row per series and day. Plain rows here; PostgreSQL packs each series into one value."""
        query = f"SELECT instance_id, database_name, day, size_mb FROM ({samples}) AS samples"
        rows = connection.execute(self._bind(query), params).all()
        if not rows:
            return DailySeries.empty()
        keys: dict[tuple[int, str | None], int] = {}
        index = np.fromiter((keys.setdefault((r[0], r[1]), len(keys)) for r in rows), np.int64, len(rows))
        days = np.fromiter((r[2] for r in rows), np.int64, len(rows))
        sizes = np.fromiter((r[3] for r in rows), np.float64, len(rows))
        return DailySeries(list(keys), index, days, sizes)

    def _bind(self, query: str) -> TextClause:
        return text(query)

    def insert_rows(self, connection: Connection, table: Table, frame: pd.DataFrame) -> None:
        """Many rows inside the caller's transaction (executemany where nothing faster exists)."""
        if frame.empty:
            return
        records = frame.astype(object).where(frame.notna(), None)
        columns = list(frame.columns)
        connection.execute(
            table.insert(), [dict(zip(columns, row, strict=True)) for row in records.itertuples(index=False)]
        )

    # -- the run center ---------------------------------------------------------------------------

    @abstractmethod
    def insert_ignoring_conflicts(self, table: Table) -> Any:
        """The dialect's INSERT that knows ON CONFLICT DO NOTHING."""

    @abstractmethod
    def for_update(self, query: Select) -> Select:
        """Lock the selected rows until the transaction ends."""

    # -- schema -----------------------------------------------------------------------------------

    @abstractmethod
    def serialise(self, connection: Connection, key: str) -> None:
        """A transaction-long mutex named `key`."""

    @abstractmethod
    def needs_month_partition(self, connection: Connection, table: str, name: str) -> bool:
        """True when `table` is partitioned by month and its partition `name` does not exist yet."""

    @abstractmethod
    def create_month_partition(
        self, engine: Engine, table: str, name: str, start: date, end: date, comment: str
    ) -> bool:
        """Create `table`'s partition `name` for the days from `start` up to (not including) `end`,
        with `comment`; False when it need not be made after all (another process made it
        meanwhile, or another partition covers the month). Safe against concurrent callers."""

    # -- connections ------------------------------------------------------------------------------

    @abstractmethod
    def create_engine(self, url: URL, limits: ConnectionLimits, **kwargs: Any) -> Engine:
        """An engine whose every connection obeys `limits`."""

    @abstractmethod
    def backend_id(self, connection: Connection) -> int | None:
        """The server session behind a connection, as other sessions see it (None: no such thing)."""

    @abstractmethod
    def cancel(self, connection: Connection) -> None:
        """Cancel the statement running on `connection`; safe to call from another thread."""

    @abstractmethod
    def cancel_backend(self, engine: Engine, backend: int) -> None:
        """Cancel whatever server session `backend` runs, from a session of its own (its own
        connection may be gone already, as after an interrupt)."""

    @abstractmethod
    def describe_wait(self, connection: Connection, backend: int) -> str | None:
        """What session `backend` is waiting for, in words, or None when it is not waiting on a lock.
        It names the holders by pid, application, table and lock mode, never by their SQL (it may
        quote data)."""

    @abstractmethod
    def current_time(self, connection: Connection) -> datetime | None:
        """The server's wall clock (timezone-aware UTC); None for an embedded database (it has none
        but this machine's)."""

    @abstractmethod
    def classify(self, error: SQLAlchemyError) -> ErrorKind:
        """What a database error means for the work in progress."""


class SqliteDialect(SqlDialect):
    """The embedded default: one file, a database-wide write lock, Python functions for the math."""

    name = "sqlite"
    partitions_by_month = False
    # CURRENT_TIMESTAMP has whole seconds; keep milliseconds so that times order correctly.
    now_sql = "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"

    def as_float(self, expr: str) -> str:
        return f"CAST({expr} AS REAL)"

    def trunc_int(self, expr: str) -> str:
        return f"CAST({expr} AS INTEGER)"

    def avg_truncated(self, column: str, where: str) -> str:
        # SQLite's SUM of integers is exact and integer division truncates toward zero.
        return f"(sum({column}) FILTER (WHERE {where}) / count({column}) FILTER (WHERE {where}))"

    def avg_as_float(self, column: str, where: str) -> str:
        return f"pg_numeric_avg_float(sum({column}) FILTER (WHERE {where}), count({column}) FILTER (WHERE {where}))"

    def py_round2(self, x: str) -> str:
        return f"py_round2({x})"

    def pg_numeric2(self, x: str) -> str:
        return f"pg_numeric2({x})"

    def text_hash(self, expr: str) -> str:
        return f"text_hash({expr})"

    def in_batch(self) -> str:
        return "instance_id IN :ids"

    def upsert_statements(
        self, ctes: str, final: str, upsert: str, records_read: str, temporary: str
    ) -> list[TextClause]:
        write = (
            f"WITH {ctes}, batch_rows AS ({final}) {upsert.format(source='batch_rows')} "
            f"RETURNING instance_id, {records_read} AS records"
        )
        return [text(write).bindparams(bindparam("ids", expanding=True))]

    def per_instance_counts(self, result: Any) -> list[tuple[int, int, int]]:
        counts: dict[int, list[int]] = {}
        for instance_id, records in result:
            tally = counts.setdefault(instance_id, [0, 0])
            tally[0] += 1
            tally[1] += records
        return [(instance_id, rows, records) for instance_id, (rows, records) in counts.items()]

    def begin_batch(self, connection: Connection) -> None:
        pass  # no per-transaction planner settings to tune

    def analyze(self, engine: Engine, tables: Sequence[str]) -> None:
        pass  # SQLite plans these queries from its indexes; without ANALYZE no statistics go stale

    def insert_ignoring_conflicts(self, table: Table) -> Any:
        return sqlite_insert(table)

    def day_offset(self, column: str, origin: str) -> str:
        return f"CAST(julianday({column}) - julianday(:{origin}) AS INTEGER)"

    def date_plus_days(self, column: str, days: str) -> str:
        return f"date({column}, '+' || ({days}) || ' days')"

    def _bind(self, query: str) -> TextClause:
        return text(query).bindparams(bindparam("ids", expanding=True))

    def for_update(self, query: Select) -> Select:
        return query  # writers are serialised: BEGIN IMMEDIATE takes the database's write lock

    def serialise(self, connection: Connection, key: str) -> None:
        pass  # the write lock taken at BEGIN (see create_engine) already serialises every writer

    def needs_month_partition(self, connection: Connection, table: str, name: str) -> bool:
        return False  # plain tables: every month goes into the one table

    def create_month_partition(
        self, engine: Engine, table: str, name: str, start: date, end: date, comment: str
    ) -> bool:
        return False

    def create_engine(self, url: URL, limits: ConnectionLimits, **kwargs: Any) -> Engine:
        # The busy timeout is SQLite's lock timeout; it has no statement timeout.
        engine = create_engine(url, connect_args={"timeout": limits.lock_timeout}, **kwargs)
        busy_ms = int(limits.lock_timeout * 1000)

        def prepare(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.isolation_level = None  # the "begin" listener issues BEGIN itself
            dbapi_connection.execute("PRAGMA foreign_keys = ON")
            dbapi_connection.execute("PRAGMA journal_mode = WAL")
            dbapi_connection.execute(f"PRAGMA busy_timeout = {busy_ms}")
            sqlmath.register_sqlite_functions(dbapi_connection)

        event.listen(engine, "connect", prepare)
        # pysqlite would defer BEGIN; take the write lock at BEGIN instead, so that two writers wait
        # for each other rather than failing mid-transaction.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine

    def backend_id(self, connection: Connection) -> int | None:
        return None  # in-process: no server session for another connection to see

    def cancel(self, connection: Connection) -> None:
        connection.connection.dbapi_connection.interrupt()

    def cancel_backend(self, engine: Engine, backend: int) -> None:
        pass  # no server sessions (backend_id is None, so nobody asks)

    def describe_wait(self, connection: Connection, backend: int) -> str | None:
        return None  # a waiting writer waits for the database's one write lock, nothing to name

    def current_time(self, connection: Connection) -> None:
        return None  # an embedded database has no clock but this machine's

    def classify(self, error: SQLAlchemyError) -> ErrorKind:
        message = first_line(error).lower()
        if "database is locked" in message:
            return ErrorKind.LOCK_TIMEOUT
        if "interrupted" in message:
            return ErrorKind.CANCELLED
        if "unable to open database file" in message:
            return ErrorKind.CONNECTION
        return ErrorKind.DATA


# SQLSTATE classes and codes (PostgreSQL appendix A)
_RETRY_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_LOCK_TIMEOUT_STATE = "55P03"  # lock_not_available
_QUERY_CANCELED_STATE = "57014"  # statement timeout or a cancel request
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")
# CREATE TABLE ... PARTITION OF fails so when the month already routes to another partition.
_ALREADY_COVERED = re.compile(r"would overlap partition|default partition", re.IGNORECASE)


class PostgresDialect(SqlDialect):
    """WhaleFall's production database: pure SQL math, parallel-capable batches, advisory locks."""

    name = "postgresql"
    partitions_by_month = True
    now_sql = "now()"
    _VELTKAMP_SPLITTER = "134217729::float8"  # 2**27 + 1
    # Per batch transaction: a batch's GROUP BYs fit in memory instead of spilling to disk, and
    # sub-second statements do not pay JIT compilation, which costs more than it saves here.
    _BATCH_SETTINGS = ("work_mem = '64MB'", "jit = off")

    def as_float(self, expr: str) -> str:
        return f"CAST({expr} AS float8)"

    def trunc_int(self, expr: str) -> str:
        return f"CAST(trunc({expr}) AS bigint)"

    def avg_truncated(self, column: str, where: str) -> str:
        return f"CAST(trunc(avg({column}) FILTER (WHERE {where})) AS bigint)"

    def avg_as_float(self, column: str, where: str) -> str:
        return f"CAST(avg({column}) FILTER (WHERE {where}) AS float8)"

    def py_round2(self, x: str) -> str:
        scaled = f"({x} * 100::float8)"
        whole = f"floor({scaled})"
        # Fast path: x*100 is at least 0.001 away from a half, far more than its rounding error
        # (below 2**-11 for |x*100| < 1e12), so float rounding decides like exact rounding.
        clear_of_half = f"abs({scaled}) < 1e12::float8 AND abs(({scaled} - {whole}) - 0.5::float8) > 0.001::float8"
        # Near a half: x*100 == scaled + error exactly (Dekker's error-free product, a Veltkamp
        # split of x; 100 needs no split); the error's sign decides, an exact half goes to even.
        splitter = self._VELTKAMP_SPLITTER
        high = f"({splitter} * {x} - ({splitter} * {x} - {x}))"
        error = f"(({high} * 100::float8 - {scaled}) + ({x} - {high}) * 100::float8)"
        above_half = f"((({scaled} - {whole}) - 0.5::float8) + {error})"
        exact = (
            f"{whole} + CASE WHEN {above_half} > 0 THEN 1 WHEN {above_half} < 0 THEN 0 "
            f"WHEN {whole} = 2 * floor({whole} / 2) THEN 0 ELSE 1 END"
        )
        return f"(CAST(CASE WHEN {clear_of_half} THEN round({scaled}) ELSE {exact} END AS numeric) / 100)"

    def pg_numeric2(self, x: str) -> str:
        return f"round(CAST({x} AS numeric), 2)"

    def text_hash(self, expr: str) -> str:
        return f"CAST(hashtext({expr}) AS bigint)"

    def in_batch(self) -> str:
        return "instance_id = ANY(:ids)"  # one array parameter, however large the batch

    def window_columns(self) -> str:
        # typed, so that CREATE TABLE AS gets the target's column types
        return (
            "CAST(:period_type AS varchar(20)) AS period_type, "
            "CAST(:start AS date) AS period_start, CAST(:end AS date) AS period_end"
        )

    def timestamp_columns(self) -> str:
        return "CAST(:now AS timestamptz) AS calculated_at, CAST(:now AS timestamptz) AS created_at"

    def upsert_statements(
        self, ctes: str, final: str, upsert: str, records_read: str, temporary: str
    ) -> list[TextClause]:
        # CREATE TEMP TABLE AS may use parallel workers; an INSERT ... SELECT never does.
        compute = f"CREATE TEMP TABLE {temporary} ON COMMIT DROP AS WITH {ctes} {final}"
        # Every computed row is written (inserted or updated), so the counts come from them.
        counts = f"SELECT instance_id, count(*), sum({records_read}) FROM {temporary} GROUP BY instance_id"
        return [text(compute), text(upsert.format(source=temporary)), text(counts)]

    def per_instance_counts(self, result: Any) -> list[tuple[int, int, int]]:
        # PostgreSQL's sum() of integers is numeric, hence int()
        return [(int(instance_id), int(rows), int(records)) for instance_id, rows, records in result]

    def bulk_insert(self, engine: Engine, table: Table, frame: pd.DataFrame) -> None:
        # COPY of pandas' own text: the only way to load millions of samples in seconds.
        buffer = io.StringIO()
        frame.to_csv(buffer, sep="\t", header=False, index=False, na_rep="\\N")
        raw = engine.raw_connection()
        try:
            statement = f"COPY {table.name} ({', '.join(frame.columns)}) FROM STDIN"
            with raw.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
                copy.write(buffer.getvalue())
            raw.commit()
        finally:
            raw.close()

    def analyze(self, engine: Engine, tables: Sequence[str]) -> None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f"ANALYZE {', '.join(tables)}"))

    def day_offset(self, column: str, origin: str) -> str:
        return f"({column} - CAST(:{origin} AS date))"

    def date_plus_days(self, column: str, days: str) -> str:
        return f"({column} + ({days}))"

    def daily_series(self, connection: Connection, samples: str, params: dict[str, Any]) -> DailySeries:
        # One bytea per series, 8 bytes a sample: size * 2**DAY_BITS + day as a big-endian int8 (sizes
        # below 2**52 MB, a few zettabytes), read
        # with np.frombuffer, so a batch is thousands of Python objects instead of millions of
        # tuples. Day and size travel in one value: they cannot come apart, whatever the order.
        query = f"""
            SELECT instance_id, database_name,
                   string_agg(int8send(CAST(size_mb AS bigint) * {2**DAY_BITS} + day), ''::bytea)
            FROM ({samples}) AS samples GROUP BY instance_id, database_name"""
        rows = connection.execute(text(query), params).all()
        if not rows:
            return DailySeries.empty()
        packed = np.frombuffer(b"".join(row[2] for row in rows), dtype=">i8").astype(np.int64)
        counts = np.fromiter((len(row[2]) // 8 for row in rows), np.int64, len(rows))
        index = np.repeat(np.arange(len(rows)), counts)
        keys = [(row[0], row[1]) for row in rows]
        # An arithmetic shift and a mask undo it, negative sizes included (two's complement).
        return DailySeries(keys, index, packed & (2**DAY_BITS - 1), (packed >> DAY_BITS).astype(np.float64))

    def insert_rows(self, connection: Connection, table: Table, frame: pd.DataFrame) -> None:
        # COPY inside the caller's transaction: its rows commit or roll back with the rest of it.
        # CSV quotes whatever text needs it (a database name may hold a comma or a quote).
        if frame.empty:
            return
        buffer = io.StringIO()
        frame.to_csv(buffer, header=False, index=False, na_rep="\\N")
        statement = f"COPY {table.name} ({', '.join(frame.columns)}) FROM STDIN (FORMAT csv, NULL '\\N')"
        try:
            with connection.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
                copy.write(buffer.getvalue())
        except psycopg.Error as error:  # the driver's own error, as SQLAlchemy's (IntegrityError, ...)
            raise DBAPIError.instance(statement, None, error, psycopg.Error) from error

    def begin_batch(self, connection: Connection) -> None:
        for setting in self._BATCH_SETTINGS:
            connection.exec_driver_sql(f"SET LOCAL {setting}")

    def begin_comparison(self, connection: Connection) -> None:
        self.begin_batch(connection)
        # Every join of an observation compares the observed versions with the recorded ones, tens of
        # thousands of (instance, day) each: a hash or merge join is linear, a nested loop (chosen when
        # the recorded versions' statistics are stale: after a first observation, as days move past
        # the histogram) scans one side once per row of the other (0.65 s a statement at 100 instances).
        connection.exec_driver_sql("SET LOCAL enable_nestloop = off")

    def insert_ignoring_conflicts(self, table: Table) -> Any:
        return postgresql_insert(table)

    def for_update(self, query: Select) -> Select:
        return query.with_for_update()

    def serialise(self, connection: Connection, key: str) -> None:
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})

    def needs_month_partition(self, connection: Connection, table: str, name: str) -> bool:
        row = connection.execute(
            text(
                "SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass(:parent)) = 'p', "
                "to_regclass(:child) IS NULL"
            ),
            {"parent": table, "child": name},
        ).one()
        return bool(row[0]) and bool(row[1])

    def create_month_partition(
        self, engine: Engine, table: str, name: str, start: date, end: date, comment: str
    ) -> bool:
        try:
            with engine.begin() as connection:
                # Two processes racing for the same partition take turns; the second finds it made.
                self.serialise(connection, f"capacity_pipeline.partition.{name}")
                if not self.needs_month_partition(connection, table, name):
                    return False
                connection.exec_driver_sql(
                    f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{table}" '
                    f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                )
                connection.exec_driver_sql(f"COMMENT ON TABLE \"{name}\" IS '{comment}'")
        except DBAPIError as error:
            # The month is already covered by a differently named or DEFAULT partition: rows route.
            if _ALREADY_COVERED.search(str(error.orig)):
                return False
            raise
        return True

    def create_engine(self, url: URL, limits: ConnectionLimits, **kwargs: Any) -> Engine:
        options = (
            f"-c statement_timeout={int(limits.statement_timeout * 1000)} "
            f"-c lock_timeout={int(limits.lock_timeout * 1000)}"
        )
        connect_args = {
            "connect_timeout": max(1, round(limits.connect_timeout)),
            "options": options,
            "application_name": "capacity_pipeline",
            # A database host that vanishes mid-statement is noticed within about a minute.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, connect_args=connect_args, **kwargs)

    def backend_id(self, connection: Connection) -> int | None:
        return connection.connection.dbapi_connection.info.backend_pid

    def cancel(self, connection: Connection) -> None:
        connection.connection.dbapi_connection.cancel_safe(timeout=5)

    def cancel_backend(self, engine: Engine, backend: int) -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": backend})

    def describe_wait(self, connection: Connection, backend: int) -> str | None:
        row = connection.execute(
            text(
                """
                SELECT a.wait_event, extract(epoch FROM now() - a.query_start) AS seconds,
                       (SELECT string_agg(DISTINCT c.relname || ' (' || l.mode || ')', ', ')
                        FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation
                        WHERE l.pid = a.pid AND NOT l.granted) AS relations,
                       (SELECT string_agg(
                                   'pid ' || b.pid || ' ('
                                   || coalesce(nullif(b.application_name, ''), 'no application name') || ', '
                                   || coalesce((SELECT string_agg(DISTINCT h.mode, ' + ')
                                                FROM pg_locks AS h
                                                JOIN pg_locks AS w ON w.pid = a.pid AND NOT w.granted
                                                     AND w.locktype = h.locktype
                                                     AND w.relation IS NOT DISTINCT FROM h.relation
                                                     AND w.objid IS NOT DISTINCT FROM h.objid
                                                WHERE h.pid = b.pid AND h.granted), 'queued ahead of it')
                                   || ')', ', ')
                        FROM pg_stat_activity AS b WHERE b.pid = ANY(pg_blocking_pids(a.pid))) AS holders
                FROM pg_stat_activity AS a
                WHERE a.pid = :pid AND a.wait_event_type = 'Lock'
                """
            ),
            {"pid": backend},
        ).first()
        if row is None:
            return None
        what = f"a lock on {row.relations}" if row.relations else f"a {row.wait_event} lock"
        holders = f" held by {row.holders}" if row.holders else ""
        return f"waiting {row.seconds:.0f} s for {what}{holders}"

    def current_time(self, connection: Connection) -> datetime:
        return connection.execute(text("SELECT clock_timestamp()")).scalar_one().astimezone(UTC)

    def classify(self, error: SQLAlchemyError) -> ErrorKind:
        state = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
        if state in _RETRY_STATES:
            return ErrorKind.RETRY
        if state == _LOCK_TIMEOUT_STATE:
            return ErrorKind.LOCK_TIMEOUT
        if state == _QUERY_CANCELED_STATE:
            return ErrorKind.STATEMENT_TIMEOUT if "timeout" in first_line(error) else ErrorKind.CANCELLED
        if state.startswith(_CONNECTION_STATES) or (isinstance(error, DBAPIError) and error.connection_invalidated):
            return ErrorKind.CONNECTION
        if not state and isinstance(error, OperationalError):
            return ErrorKind.CONNECTION  # no SQLSTATE: the server never answered (refused, unreachable, gone)
        return ErrorKind.DATA


_DIALECTS: dict[str, SqlDialect] = {"sqlite": SqliteDialect(), "postgresql": PostgresDialect()}


@cache
def dialect_named(name: str) -> SqlDialect:
    try:
        return _DIALECTS[name]
    except KeyError:
        raise ValueError(f"dialect: unsupported {name!r}; allowed: {', '.join(sorted(_DIALECTS))}") from None


def dialect_of(bind: Engine | Connection) -> SqlDialect:
    return dialect_named(bind.dialect.name)
