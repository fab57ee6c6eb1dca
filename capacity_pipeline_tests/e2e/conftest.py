"""Real `dagster dev` servers (webserver and daemon, the production dagster.yaml, PostgreSQL storage
in a throwaway database), each in its own process group.

`dagster_dev` is one server for the session, with test-sized settings and automation off (a data
load of one test must not start runs in the next). A test that needs a server of its own (its own
settings, or to start it itself) takes `fresh_dagster_dev`, which also gives it a WhaleFall database
of its own: two deployments watching one database would both pick up its requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline_tests.support import DagsterDev, database_url, scratch_database

E2E = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder is `slow`, and all run on one xdist worker (they share the session's
    `dagster dev`, and two servers at once would starve the other worker on a small machine)."""
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("e2e"))


SHARED_SETTINGS = {
    "CAPACITY_BATCH_SIZE": "2",
    "CAPACITY_BATCH_PAUSE_SECONDS": "0.5",
    "CAPACITY_HEARTBEAT_SECONDS": "1",
    "CAPACITY_HEARTBEAT_TIMEOUT_SECONDS": "15",
    "CAPACITY_AUTOMATION": "off",
}


@pytest.fixture(scope="session")
def dagster_dev(tmp_path_factory, postgres_url) -> Iterator[DagsterDev]:
    with scratch_database("capacity_e2e") as storage:
        folder = tmp_path_factory.mktemp("dagster_dev")
        server = DagsterDev.prepared(
            folder, database_url(storage, driver="postgresql+psycopg2"), postgres_url, **SHARED_SETTINGS
        )
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture
def fresh_dagster_dev(tmp_path) -> Iterator[Callable[..., DagsterDev]]:
    """A factory: `fresh_dagster_dev(NAME="value", ...)` prepares a server of the test's own (not
    started) over a WhaleFall database of its own (`server.whalefall_engine`)."""
    servers: list[DagsterDev] = []
    with scratch_database("capacity_e2e") as storage, scratch_database("capacity_e2e_whalefall") as whalefall:
        engine = make_engine(database_url(whalefall))
        create_schema(engine)

        def prepare(**settings: str) -> DagsterDev:
            folder = tmp_path / f"server{len(servers)}"
            folder.mkdir()
            server = DagsterDev.prepared(
                folder, database_url(storage, driver="postgresql+psycopg2"), database_url(whalefall), **settings
            )
            server.whalefall_engine = engine
            servers.append(server)
            return server

        try:
            yield prepare
        finally:
            for server in servers:
                server.stop()
            engine.dispose()
