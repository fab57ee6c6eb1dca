"""Fixtures and helpers for tests that run real Dagster code."""

from __future__ import annotations

import dagster as dg
import pytest
from sqlalchemy import Engine

from capacity_pipeline.defs.resources import WhaleFallDatabase


def dagster_resources(engine: Engine, **throttle: float) -> dict:
    """The code location's resources, pointed at a test database."""
    return {"whalefall": WhaleFallDatabase(url=engine.url.render_as_string(hide_password=False), **throttle)}


@pytest.fixture
def dagster_instance():
    """A real, throwaway Dagster instance."""
    with dg.instance_for_test() as instance:
        yield instance
