"""Shared fixtures: every database test runs on a real SQLite file and a real PostgreSQL server.

PostgreSQL comes from CAPACITY_TEST_POSTGRES_URL (default: the local server, trust auth). A
throwaway database is created for the session and dropped afterwards; tables are emptied
between tests. A PostgreSQL that cannot be reached fails the tests: it is never skipped.
Helpers are in support.py.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import dagster as dg
import pytest
from sqlalchemy import Engine

from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import (
    PrivatePostgres,
    WhaleFallData,
    database_url,
    empty_tables,
    scratch_database,
)


def pytest_configure(config: pytest.Config) -> None:
    """Start from the signal handlers of a foreground run. A run started as a background job of a
    script (`make test &`, some CI runners) inherits SIGINT ignored; Dagster's capture_interrupts
    (every in-process run on the main thread) then maps SIGTERM to SIGINT's handler when it ends,
    so SIGTERM is ignored too, and the compute-log `tail` processes a later run spawns inherit it
    and outlive their terminate() (a run hung 60 s in its teardown, two tests failed)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    with scratch_database("capacity_test") as name:
        yield database_url(name)


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the session's own, which tests may stop and restart (the machine's
    server is shared: it is never restarted). Started on first use; removed at the end."""
    server = PrivatePostgres().start()
    try:
        yield server
    finally:
        server.remove()


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


@pytest.fixture
def whalefall(engine: Engine) -> WhaleFallData:
    return WhaleFallData(engine)


@pytest.fixture
def pg_whalefall(pg_engine: Engine) -> WhaleFallData:
    return WhaleFallData(pg_engine)


@pytest.fixture
def dagster_instance() -> Iterator[dg.DagsterInstance]:
    """A real, throwaway Dagster instance."""
    with dg.instance_for_test() as instance:
        yield instance
