"""The HTTP contract of compat 7.1 / 7.3 through Flask's test client, with both auth backends."""

from __future__ import annotations

import logging

import pytest

from capacity_pipeline.api.auth import BearerTokenAuth
from capacity_pipeline.domain.model import Scope
from capacity_pipeline.domain.run_center.payloads import current_summary
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.settings import Settings
from capacity_pipeline_tests.api.whalefall_host import ADMIN_ID, VIEWER_ID, csrf_header, login
from capacity_pipeline_tests.support import ADMIN_TOKEN, CURRENT, VIEWER_TOKEN
from capacity_pipeline_tests.support import error as _error
from capacity_pipeline_tests.support import task_runs as _task_runs


def _admin_with_csrf(client) -> dict[str, str]:
    login(client, ADMIN_ID)
    return csrf_header(client)


# -- compat 7.1: the checks, in order --------------------------------------------------------------


def test_not_logged_in_is_401_before_anything_else(host_client, engine):
    response = host_client.post(CURRENT, json={"scope": "bogus"})
    body = _error(response, 401, "AUTHENTICATION_REQUIRED", "请先登录", "authentication")
    assert (body["severity"], body["suggestions"]) == ("medium", ["重新登录", "验证凭据有效性"])
    assert _task_runs(engine) == 0


def test_not_admin_is_403_before_csrf(host_client, engine):
    login(host_client, VIEWER_ID)
    response = host_client.post(CURRENT, json={"scope": "all"}, headers={"X-CSRFToken": "garbage"})
    body = _error(response, 403, "PERMISSION_REQUIRED", "需要 admin 权限", "authorization")
    assert body["suggestions"] == ["检查权限配置", "联系管理员"]
    assert body["context"]["user_id"] == VIEWER_ID == 2
    assert _task_runs(engine) == 0


def test_missing_csrf_token_is_403(host_client, engine):
    login(host_client, ADMIN_ID)
    _error(host_client.post(CURRENT, json={"scope": "all"}), 403, "CSRF_MISSING", "缺少 CSRF 令牌", "authorization")
    assert _task_runs(engine) == 0


def test_invalid_csrf_token_is_403(host_client, engine):
    login(host_client, ADMIN_ID)
    response = host_client.post(CURRENT, json={"scope": "bogus"}, headers={"X-CSRFToken": "not-a-token"})
    _error(response, 403, "CSRF_INVALID", "CSRF 令牌无效,请刷新后重试", "authorization")
    assert _task_runs(engine) == 0


def test_bad_scope_is_400_and_writes_nothing(host_client, engine):
    headers = _admin_with_csrf(host_client)
    response = host_client.post(CURRENT, json={"scope": "everything", "period_type": "daily"}, headers=headers)
    body = _error(response, 400, "VALIDATION_ERROR", "scope 参数仅支持 instance、database 或 all", "validation")
    assert (body["severity"], body["suggestions"]) == ("low", ["检查输入数据", "根据提示修正请求参数"])
    assert _task_runs(engine) == 0


def test_good_request_writes_the_task_run_and_answers_the_run_id(host_client, engine):
    headers = _admin_with_csrf(host_client)
    response = host_client.post(CURRENT, json={"scope": " Instance ", "period_type": "weekly"}, headers=headers)

    body = response.get_json()
    assert response.status_code == 200
    assert set(body) == {"success", "error", "message", "timestamp", "data"}
    assert (body["success"], body["error"], body["message"]) == (
        True,
        False,
        "任务已在后台启动,请稍后在运行中心查看进度.",
    )
    run = RunCenter(engine).get_run(body["data"]["run_id"])
    assert (run["status"], run["created_by"], run["task_key"], run["result_url"]) == (
        "running",
        1,
        "capacity_aggregate_current",
        "/capacity/instances",
    )
    # The requested period type travels with the trigger; the run takes that period's current window.
    expected = current_summary("capacity_aggregate_current", Scope.INSTANCE, extra={"requested_period_type": "weekly"})
    assert run["summary_json"] == expected
    assert _task_runs(engine) == 1


@pytest.mark.parametrize(
    ("request_kwargs", "scope"),
    [
        ({}, "all"),
        ({"json": {}}, "all"),
        ({"json": {"scope": "   "}}, "all"),
        ({"json": {"scope": 5}}, "all"),
        ({"json": ["database"]}, "all"),
        ({"json": {"scope": "DATABASE"}}, "database"),
        ({"json": {"period_type": "daily"}}, "all"),
        ({"data": "", "content_type": "text/plain"}, "all"),
    ],
)
def test_scope_normalisation(host_client, engine, request_kwargs, scope):
    headers = _admin_with_csrf(host_client)
    response = host_client.post(CURRENT, headers=headers, **request_kwargs)
    assert response.status_code == 200, response.get_json()
    run = RunCenter(engine).get_run(response.get_json()["data"]["run_id"])
    assert run["summary_json"]["common"]["inputs"] == {"scope": scope}


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "VALIDATION_ERROR"),
        ({"data": "scope=database", "content_type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ({"json": {"scope": "all", "padding": "x" * 5000}}, 413, "PAYLOAD_TOO_LARGE"),
    ],
)
def test_bad_bodies_get_a_clear_4xx_and_write_nothing(host_client, engine, request_kwargs, status, code):
    headers = _admin_with_csrf(host_client)
    response = host_client.post(CURRENT, headers=headers, **request_kwargs)
    body = response.get_json()
    assert (response.status_code, body["message_code"], body["category"]) == (status, code, "validation")
    assert _task_runs(engine) == 0


def test_a_body_declared_over_4_kb_is_413_before_login_and_role_are_looked_at(host_client, bearer_client, engine):
    oversized = {"data": b"x" * 5000, "content_type": "application/json"}
    for response in (host_client.post(CURRENT, **oversized), bearer_client.post(CURRENT, **oversized)):
        body = response.get_json()
        assert (response.status_code, body["message_code"]) == (413, "PAYLOAD_TOO_LARGE"), body
    assert _task_runs(engine) == 0


# -- compat 7.3: task runs -------------------------------------------------------------------------


def test_task_run_detail_and_cancel(host_client, engine, whalefall):
    whalefall.instance(1, "alpha")
    headers = _admin_with_csrf(host_client)
    run_id = host_client.post(CURRENT, json={}, headers=headers).get_json()["data"]["run_id"]
    RunCenter(engine).snapshot_items(run_id)

    detail = host_client.get(f"/api/v1/task-runs/{run_id}").get_json()
    assert detail["message"] == "获取任务运行详情成功"
    run, items = detail["data"]["run"], detail["data"]["items"]
    assert (run["run_id"], run["status"], run["completed_at"]) == (run_id, "running", None)
    assert "T" in run["started_at"] and "T" in run["created_at"]
    assert [(i["item_key"], i["item_name"], i["status"]) for i in items] == [("1", "alpha", "pending")]

    cancelled = host_client.post(f"/api/v1/task-runs/{run_id}/actions/cancel", headers=headers)
    assert cancelled.status_code == 200
    assert set(cancelled.get_json()) == {"success", "error", "message", "timestamp"}  # no data
    assert cancelled.get_json()["message"] == "任务已取消"
    again = host_client.post(f"/api/v1/task-runs/{run_id}/actions/cancel", headers=headers)
    _error(again, 404, "RESOURCE_NOT_FOUND", "取消任务失败,任务不存在或已结束", "business")
    detail = host_client.get(f"/api/v1/task-runs/{run_id}").get_json()["data"]
    assert detail["run"]["status"] == "cancelled" and detail["items"][0]["status"] == "cancelled"


def test_task_run_endpoints_check_login_admin_csrf_and_existence(host_client):
    _error(host_client.get("/api/v1/task-runs/nope"), 401, "AUTHENTICATION_REQUIRED", "请先登录", "authentication")
    login(host_client, VIEWER_ID)
    _error(host_client.get("/api/v1/task-runs/nope"), 404, "RESOURCE_NOT_FOUND", "任务运行不存在", "business")
    _error(
        host_client.post("/api/v1/task-runs/nope/actions/cancel"),
        403,
        "PERMISSION_REQUIRED",
        "需要 admin 权限",
        "authorization",
    )
    login(host_client, ADMIN_ID)
    _error(
        host_client.post("/api/v1/task-runs/nope/actions/cancel"),
        403,
        "CSRF_MISSING",
        "缺少 CSRF 令牌",
        "authorization",
    )
    headers = csrf_header(host_client)
    _error(
        host_client.post("/api/v1/task-runs/nope/actions/cancel", headers=headers),
        404,
        "RESOURCE_NOT_FOUND",
        "任务运行不存在",
        "business",
    )


# -- the standalone bearer-token backend ---------------------------------------------------------


def test_bearer_tokens_authenticate_without_csrf(bearer_client, engine, caplog):
    caplog.set_level(logging.DEBUG)
    _error(bearer_client.post(CURRENT, json={}), 401, "AUTHENTICATION_REQUIRED", "请先登录", "authentication")
    wrong = {"Authorization": "Bearer tok-admin-7f3a9d"}
    _error(
        bearer_client.post(CURRENT, json={}, headers=wrong),
        401,
        "AUTHENTICATION_REQUIRED",
        "请先登录",
        "authentication",
    )
    viewer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    _error(
        bearer_client.post(CURRENT, json={}, headers=viewer),
        403,
        "PERMISSION_REQUIRED",
        "需要 admin 权限",
        "authorization",
    )
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    _error(
        bearer_client.post(CURRENT, json={"scope": "x"}, headers=admin),
        400,
        "VALIDATION_ERROR",
        "scope 参数仅支持 instance、database 或 all",
        "validation",
    )
    assert _task_runs(engine) == 0

    response = bearer_client.post(CURRENT, json={"scope": "database"}, headers=admin)

    run_id = response.get_json()["data"]["run_id"]
    assert RunCenter(engine).get_run(run_id)["created_by"] == 9
    assert bearer_client.get(f"/api/v1/task-runs/{run_id}", headers=viewer).status_code == 200
    assert ADMIN_TOKEN not in caplog.text and VIEWER_TOKEN not in caplog.text


def test_the_standalone_server_answers_its_own_errors_in_the_envelope(bearer_client):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert bearer_client.get("/api/v1/nothing-here", headers=admin).get_json()["message_code"] == "NOT_FOUND"
    wrong_method = bearer_client.get(CURRENT, headers=admin)
    assert (wrong_method.status_code, wrong_method.get_json()["message_code"]) == (405, "METHOD_NOT_ALLOWED")


def test_serving_without_tokens_names_the_variable():
    with pytest.raises(ValueError, match="CAPACITY_API_TOKENS is not set"):
        BearerTokenAuth.from_settings(Settings())
