"""A real `dagster dev` (webserver and daemon) on a free port, with PostgreSQL storage in a
throwaway database and the production dagster.yaml, in its own process group."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from capacity_pipeline_tests.support import DagsterDev, database_url, scratch_database


@pytest.fixture
def dagster_dev(request, tmp_path, postgres_url, monkeypatch) -> Iterator[DagsterDev]:
    """`@pytest.mark.dagster_env(NAME="value")` adds variables to the server's environment. The test
    process sees the same Dagster storage URL (for DagsterDev.instance()) for the test only."""
    marker = request.node.get_closest_marker("dagster_env")
    with scratch_database("capacity_e2e") as storage:
        storage_url = database_url(storage, driver="postgresql+psycopg2")
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", storage_url)
        server = DagsterDev.prepared(tmp_path, storage_url, postgres_url, **(marker.kwargs if marker else {}))
        try:
            yield server.start()
        finally:
            server.stop()
