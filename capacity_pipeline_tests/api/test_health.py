"""GET /api/v1/health: no login, 200 when the database answers, 503 (without naming it) when not;
and every other route while the database is unreachable: 503 with Retry-After, never a 500."""

from __future__ import annotations

import logging
import uuid

import pytest

from capacity_pipeline.api.auth import BearerTokenAuth, Caller
from capacity_pipeline.api.blueprint import RETRY_AFTER_SECONDS
from capacity_pipeline.api.server import create_app
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.dialects import ConnectionLimits
from capacity_pipeline_tests.api.whalefall_host import ADMIN_ID, create_host_app, csrf_header, login
from capacity_pipeline_tests.support import ADMIN_TOKEN, CURRENT, HEALTH, SUCCESS_KEYS, error

PASSWORD = "s3cret-pw-91x"
UNREACHABLE = [
    f"postgresql://capacity:{PASSWORD}@127.0.0.1:1/whalefall",  # nothing listens on port 1
    "sqlite:////nonexistent-directory-3f1/whalefall.db",
]
NAMES_OF_THE_DATABASE = (PASSWORD, "postgresql", "sqlite", "127.0.0.1:1", "nonexistent-directory", "whalefall.db")


def _apps(engine):
    return {
        "standalone": create_app(engine, BearerTokenAuth({ADMIN_TOKEN: Caller(9, "admin")})),
        "whalefall": create_host_app(engine),
    }


@pytest.mark.parametrize("mounted", ["standalone", "whalefall"])
def test_health_is_200_with_the_database_ok_without_login(engine, mounted):
    response = _apps(engine)[mounted].test_client().get(HEALTH)
    body = response.get_json()
    assert response.status_code == 200, body
    assert set(body) == SUCCESS_KEYS | {"data"}
    assert (body["success"], body["error"], body["message"]) == (True, False, "服务正常")
    assert body["data"] == {"database": "ok"}


@pytest.mark.parametrize("url", UNREACHABLE)
@pytest.mark.parametrize("mounted", ["standalone", "whalefall"])
def test_health_is_503_without_naming_the_database_when_it_is_unreachable(url, mounted, caplog):
    caplog.set_level(logging.INFO)
    unreachable = make_engine(url)
    response = _apps(unreachable)[mounted].test_client().get(HEALTH)
    body = error(response, 503, "DATABASE_UNAVAILABLE", "数据库不可用", "system")
    assert (body["severity"], body["recoverable"]) == ("high", False)
    text = response.get_data(as_text=True)
    for secret in NAMES_OF_THE_DATABASE:
        assert secret not in text
    assert "health check: the database is unavailable (OperationalError: " in caplog.text
    assert PASSWORD not in caplog.text
    unreachable.dispose()


@pytest.mark.parametrize("url", UNREACHABLE)
@pytest.mark.parametrize("mounted", ["standalone", "whalefall"])
def test_every_route_is_503_with_retry_after_while_the_database_is_unreachable(url, mounted, caplog):
    caplog.set_level(logging.INFO)
    unreachable = make_engine(url, ConnectionLimits(connect_timeout=1))
    client = _apps(unreachable)[mounted].test_client()
    if mounted == "standalone":
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    else:
        login(client, ADMIN_ID)
        headers = csrf_header(client)
    run = f"/api/v1/task-runs/{uuid.uuid4()}"
    for response in (
        client.get(HEALTH),
        client.post(CURRENT, json={"scope": "instance"}, headers=headers),
        client.get(run, headers=headers),
        client.post(f"{run}/actions/cancel", headers=headers),
    ):
        error(response, 503, "DATABASE_UNAVAILABLE", "数据库不可用", "system")
        assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        text = response.get_data(as_text=True)
        assert all(name not in text for name in NAMES_OF_THE_DATABASE), text
    assert "Traceback" not in caplog.text and PASSWORD not in caplog.text
    unreachable.dispose()
