"""Shared fixtures: every database test runs on a real SQLite file and a real PostgreSQL server.

PostgreSQL comes from CAPACITY_TEST_POSTGRES_URL (default: the local server, trust auth). A
throwaway database is created for the session and dropped afterwards; tables are emptied
between tests. A PostgreSQL that cannot be reached fails the tests: it is never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Engine, create_engine, insert, make_url, select, text

from capacity_pipeline.domain.database import make_engine
from capacity_pipeline.domain.partitions import ensure_month_partitions, months_between
from capacity_pipeline.domain.tables import create_schema, tables_for

ADMIN_URL = os.environ.get("CAPACITY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_TABLES = (
    "task_run_items",
    "task_runs",
    "database_size_aggregations",
    "instance_size_aggregations",
    "database_size_stats",
    "instance_size_stats",
    "instances",
)


def _admin_engine() -> Engine:
    url = make_url(ADMIN_URL).set(drivername="postgresql+psycopg")
    return create_engine(url, isolation_level="AUTOCOMMIT")


@contextmanager
def row_trigger(engine: Engine, table: str, condition: str, *, event: str = "INSERT", error: str | None = None):
    """A real trigger for the length of the block, on rows of `table` where `condition` (SQL over
    NEW, valid on both dialects) holds: it raises `error`, or without one silently skips the row."""
    name = f"test_trigger_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            effect = f"RAISE(ABORT, '{error}')" if error else "RAISE(IGNORE)"
            connection.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {condition} BEGIN SELECT {effect}; END"
            )
        else:
            effect = f"RAISE EXCEPTION '{error}'" if error else "RETURN NULL"
            connection.exec_driver_sql(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {condition} THEN {effect}; END IF; RETURN NEW; END $$"
            )
            connection.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
    try:
        yield
    finally:
        with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
            else:
                connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                connection.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}()")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    name = f"capacity_test_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:  # noqa: ANN001
    """An empty WhaleFall schema on each dialect."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'whalefall.db'}")
        create_schema(engine)
        yield engine
        engine.dispose()
        return
    engine = request.getfixturevalue("postgres_engine")
    empty_tables(engine)
    yield engine


@pytest.fixture
def pg_engine(postgres_engine: Engine) -> Engine:
    """The PostgreSQL engine alone, emptied, for PostgreSQL-only behaviour (partitions, locks)."""
    empty_tables(postgres_engine)
    return postgres_engine


def empty_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE"))


class WhaleFallData:
    """Small helpers that write WhaleFall rows the way its collector would."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tables = tables_for(engine).tables

    def instance(self, instance_id: int, name: str | None = None, *, active: bool = True, deleted: bool = False) -> int:
        with self.engine.begin() as connection:
            connection.execute(
                insert(self.tables["instances"]),
                {
                    "id": instance_id,
                    "name": name or f"instance-{instance_id}",
                    "db_type": "mysql",
                    "is_active": active,
                    "deleted_at": datetime(2026, 1, 1, tzinfo=UTC) if deleted else None,
                },
            )
        return instance_id

    def database_stats(
        self,
        instance_id: int,
        database_name: str,
        samples: list[tuple[date, int, int | None]],
        log_size_mb: int | None = None,
    ) -> None:
        """samples: (collected_date, size_mb, data_size_mb)."""
        self._partitions("database_size_stats", [day for day, *_ in samples])
        rows = [
            {
                "instance_id": instance_id,
                "database_name": database_name,
                "size_mb": size,
                "data_size_mb": data,
                "log_size_mb": log_size_mb,
                "collected_date": day,
            }
            for day, size, data in samples
        ]
        with self.engine.begin() as connection:
            connection.execute(insert(self.tables["database_size_stats"]), rows)

    def instance_stats(
        self, instance_id: int, samples: list[tuple[date, int, int]], *, is_deleted: bool = False
    ) -> None:
        """samples: (collected_date, total_size_mb, database_count)."""
        self._partitions("instance_size_stats", [day for day, *_ in samples])
        rows = [
            {
                "instance_id": instance_id,
                "total_size_mb": total,
                "database_count": count,
                "collected_date": day,
                "is_deleted": is_deleted,
            }
            for day, total, count in samples
        ]
        with self.engine.begin() as connection:
            connection.execute(insert(self.tables["instance_size_stats"]), rows)

    def _partitions(self, table: str, days: list[date]) -> None:
        if days:
            ensure_month_partitions(self.engine, [table], months_between(min(days), max(days)))

    def rows(self, table: str, order_by: str = "instance_id") -> list[dict]:
        """The table's rows with typed values (dates, Decimals) on both dialects."""
        query = select(self.tables[table]).order_by(text(order_by))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]


@pytest.fixture
def whalefall(engine: Engine) -> WhaleFallData:
    return WhaleFallData(engine)


@pytest.fixture
def pg_whalefall(pg_engine: Engine) -> WhaleFallData:
    return WhaleFallData(pg_engine)
