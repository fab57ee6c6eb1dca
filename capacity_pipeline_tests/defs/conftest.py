"""Fixtures and helpers for tests that run real Dagster code."""

from __future__ import annotations

import dagster as dg
import pytest
from sqlalchemy import Engine

from capacity_pipeline.defs.resources import WhaleFallDatabase


def dagster_resources(engine: Engine, **throttle: float) -> dict:
    """The code location's resources, pointed at a test database."""
    return {"whalefall": WhaleFallDatabase(url=engine.url.render_as_string(hide_password=False), **throttle)}


def resolve_job(engine: Engine, name: str, **throttle: float) -> dg.JobDefinition:
    """One of the code location's jobs (or the implicit asset job), with test resources."""
    from capacity_pipeline.defs import defs as code_location
    from capacity_pipeline.defs.assets import AGGREGATION_ASSETS
    from capacity_pipeline.defs.checks import AGGREGATION_CHECKS

    definitions = dg.Definitions(
        assets=list(AGGREGATION_ASSETS.values()),
        asset_checks=AGGREGATION_CHECKS,
        jobs=[job for job in code_location.jobs if getattr(job, "name", None) == name],
        resources=dagster_resources(engine, **throttle),
    )
    if name == "__ASSET_JOB":
        return definitions.resolve_implicit_global_asset_job_def()
    return definitions.resolve_job_def(name)


@pytest.fixture
def dagster_instance():
    """A real, throwaway Dagster instance."""
    with dg.instance_for_test() as instance:
        yield instance
