"""GET /api/v1/health: no login; 200 when the database answers and the daemon's trigger sensor
ticked lately, 503 (naming neither the database nor its URL) when not; and every other route while
the database is unreachable: 503 with Retry-After, never a 500."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import timedelta

import dagster as dg
import pytest
from sqlalchemy import select, update

from capacity_pipeline.api.auth import BearerTokenAuth, Caller
from capacity_pipeline.api.blueprint import RETRY_AFTER_SECONDS
from capacity_pipeline.api.server import create_app
from capacity_pipeline.defs.run_center.trigger_sensor import build_trigger_sensor
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.dialects import ConnectionLimits
from capacity_pipeline.domain.storage.tables import tables_for
from capacity_pipeline_tests.api.whalefall_host import ADMIN_ID, create_host_app, csrf_header, login
from capacity_pipeline_tests.support import (
    ADMIN_TOKEN,
    CURRENT,
    HEALTH,
    PARTITIONS,
    SUCCESS_KEYS,
    dagster_resources,
    error,
)

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


capacity_current_trigger = build_trigger_sensor(PARTITIONS)


def _tick_the_trigger_sensor(engine) -> None:  # noqa: ANN001
    """One evaluation of the real sensor, as the daemon runs it every 2 s."""
    with dg.instance_for_test() as instance:
        resources = dagster_resources(engine)
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            capacity_current_trigger(context)


def _age_the_last_tick(engine, seconds: float) -> None:  # noqa: ANN001
    """Move the recorded tick back in time, by the database's own clock."""
    heartbeats = tables_for(engine).tables["capacity_sensor_heartbeats"]
    with engine.begin() as connection:
        ticked_at = connection.execute(select(heartbeats.c.ticked_at)).scalar_one()
        connection.execute(update(heartbeats).values(ticked_at=ticked_at - timedelta(seconds=seconds)))


@pytest.mark.parametrize("mounted", ["standalone", "whalefall"])
def test_health_is_200_with_the_database_ok_and_the_last_tick_without_login(engine, mounted):
    _tick_the_trigger_sensor(engine)
    response = _apps(engine)[mounted].test_client().get(HEALTH)
    body = response.get_json()
    assert response.status_code == 200, body
    assert set(body) == SUCCESS_KEYS | {"data"}
    assert (body["success"], body["error"], body["message"]) == (True, False, "服务正常")
    assert set(body["data"]) == {"database", "trigger_sensor", "trigger_sensor_last_tick_seconds_ago"}
    assert (body["data"]["database"], body["data"]["trigger_sensor"]) == ("ok", "ok")
    assert 0 <= body["data"]["trigger_sensor_last_tick_seconds_ago"] < 5


@pytest.mark.parametrize("mounted", ["standalone", "whalefall"])
def test_health_is_503_while_no_daemon_ticks_the_trigger_sensor(engine, mounted, caplog):
    """No daemon: a request would wait the pick-up timeout (300 s) before failing. Degraded from
    the start, and again once the last tick is older than 15 ticks (30 s)."""
    caplog.set_level(logging.INFO)
    client = _apps(engine)[mounted].test_client()
    never = client.get(HEALTH)
    error(
        never,
        503,
        "DAEMON_UNAVAILABLE",
        "Dagster 守护进程未运行: 手动触发的任务不会启动 (触发传感器从未运行)",
        "system",
    )
    assert never.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)

    _tick_the_trigger_sensor(engine)
    _age_the_last_tick(engine, 29)
    assert client.get(HEALTH).status_code == 200
    _age_the_last_tick(engine, 2)
    stale = client.get(HEALTH)
    body = error(stale, 503, "DAEMON_UNAVAILABLE", stale.get_json()["message"], "system")
    assert re.fullmatch(
        r"Dagster 守护进程未运行: 手动触发的任务不会启动 \(触发传感器 3\d 秒前最后运行\)", body["message"]
    )
    assert "health check: the trigger sensor last ticked 3" in caplog.text


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
