"""The blueprint inside a WhaleFall-like host with app-wide CSRFProtect: with the blueprint exempted,
every code of compat 7.1 comes from the blueprint, in WhaleFall's order, as a JSON envelope."""

from __future__ import annotations

import pytest

from capacity_pipeline.domain.run_center.sensor_heartbeats import record_trigger_sensor_tick
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline_tests.api.whalefall_host import ADMIN_ID, VIEWER_ID, create_host_app, csrf_header, login
from capacity_pipeline_tests.support import CURRENT, HEALTH, error, task_runs

AUTHENTICATION = ("AUTHENTICATION_REQUIRED", "请先登录", "authentication")
PERMISSION = ("PERMISSION_REQUIRED", "需要 admin 权限", "authorization")
CSRF_MISSING = ("CSRF_MISSING", "缺少 CSRF 令牌", "authorization")
CSRF_INVALID = ("CSRF_INVALID", "CSRF 令牌无效,请刷新后重试", "authorization")


@pytest.fixture(params=[None, "capacity_v2"], ids=["default-name", "renamed"])
def client(request, engine):
    """Exempting the Blueprint object holds whatever name the host registers it under."""
    return create_host_app(engine, name=request.param).test_client()


def _json(response) -> dict:  # noqa: ANN001
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:200]
    return response.get_json()


def test_every_code_in_whalefall_order(client, engine):
    cancel = "/api/v1/task-runs/00000000-0000-4000-8000-000000000000/actions/cancel"
    for path in (CURRENT, cancel):
        error(client.post(path, json={"scope": "bogus"}), 401, *AUTHENTICATION)  # logged out, no token
        error(client.post(path, json={}, headers={"X-CSRFToken": "junk"}), 401, *AUTHENTICATION)
    error(client.get("/api/v1/task-runs/00000000-0000-4000-8000-000000000000"), 401, *AUTHENTICATION)

    login(client, VIEWER_ID)
    error(client.post(CURRENT, json={"scope": "bogus"}), 403, *PERMISSION)  # before any CSRF check
    error(client.post(CURRENT, json={}, headers=csrf_header(client)), 403, *PERMISSION)

    login(client, ADMIN_ID)
    error(client.post(CURRENT, json={"scope": "bogus"}), 403, *CSRF_MISSING)
    error(client.post(CURRENT, json={"scope": "bogus"}, headers={"X-CSRFToken": "not-a-token"}), 403, *CSRF_INVALID)
    other_session = create_host_app(engine).test_client()
    login(other_session, ADMIN_ID)
    error(client.post(CURRENT, json={}, headers=csrf_header(other_session)), 403, *CSRF_INVALID)
    good = csrf_header(client)
    message = "scope 参数仅支持 instance、database 或 all"
    error(client.post(CURRENT, json={"scope": "bogus"}, headers=good), 400, "VALIDATION_ERROR", message, "validation")
    error(client.post(cancel, headers=good), 404, "RESOURCE_NOT_FOUND", "任务运行不存在", "business")
    assert task_runs(engine) == 0

    response = client.post(CURRENT, json={"scope": "instance"}, headers=good)
    body = _json(response)
    assert response.status_code == 200, body
    run = RunCenter(engine).get_run(body["data"]["run_id"])
    assert (run["created_by"], run["summary_json"]["common"]["inputs"]) == (ADMIN_ID, {"scope": "instance"})
    assert task_runs(engine) == 1


def test_reads_need_a_login_and_health_nothing(client, engine):
    record_trigger_sensor_tick(engine, 2)
    assert _json(client.get(HEALTH))["data"]["database"] == "ok"
    login(client, ADMIN_ID)
    run_id = _json(client.post(CURRENT, json={}, headers=csrf_header(client)))["data"]["run_id"]
    client.get("/test/logout")
    error(client.get(f"/api/v1/task-runs/{run_id}"), 401, *AUTHENTICATION)
    login(client, VIEWER_ID)
    assert _json(client.get(f"/api/v1/task-runs/{run_id}"))["data"]["run"]["run_id"] == run_id


def test_without_the_exemption_csrfprotect_answers_first_with_html(engine):
    """Why the host must exempt the blueprint: Flask-WTF's 400 page pre-empts 401 and 403."""
    client = create_host_app(engine, exempt=False).test_client()
    logged_out = client.post(CURRENT, json={"scope": "all"})
    assert (logged_out.status_code, logged_out.mimetype) == (400, "text/html")
    assert "CSRF" in logged_out.get_data(as_text=True)
    login(client, VIEWER_ID)
    assert client.post(CURRENT, json={}).status_code == 400  # not the 403 PERMISSION_REQUIRED envelope
    assert task_runs(engine) == 0
