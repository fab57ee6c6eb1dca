"""The two ways the blueprint is served: inside a WhaleFall-like host app, and standalone."""

from __future__ import annotations

import pytest

from capacity_pipeline.api.auth import BearerTokenAuth, Caller
from capacity_pipeline.api.server import create_app
from capacity_pipeline_tests.api.whalefall_host import create_host_app
from capacity_pipeline_tests.support import ADMIN_TOKEN, VIEWER_TOKEN


@pytest.fixture
def host_client(engine):
    """WhaleFall's side: app-wide CSRFProtect, Flask-Login session, the blueprint mounted (exempted)."""
    return create_host_app(engine).test_client()


@pytest.fixture
def bearer_client(engine):
    auth = BearerTokenAuth({ADMIN_TOKEN: Caller(9, "admin"), VIEWER_TOKEN: Caller(10, "user")})
    return create_app(engine, auth).test_client()
