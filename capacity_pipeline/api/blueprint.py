"""WhaleFall's capacity trigger and task-run endpoints (spec 7.1, 7.3) as a Flask blueprint.

`create_blueprint(engine, auth)` mounts in WhaleFall (host-session auth) or in the standalone
server (bearer tokens). Every rejection happens before anything is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import Engine

from capacity_pipeline.api.auth import AuthBackend, require_admin, require_login
from capacity_pipeline.api.envelopes import (
    ApiError,
    internal_error,
    not_found,
    payload_too_large,
    success,
    unsupported_media_type,
    validation_error,
)
from capacity_pipeline.domain.runcenter import RunCenter
from capacity_pipeline.domain.triggers import InvalidScope, normalise_scope, request_current_aggregation

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096  # the trigger body is a scope and a period type
STARTED_MESSAGE = "任务已在后台启动,请稍后在运行中心查看进度."
TRIGGER_FAILED_MESSAGE = "触发当前周期数据聚合失败"
RUN_NOT_FOUND_MESSAGE = "任务运行不存在"
CANCELLED_MESSAGE = "任务已取消"
CANCEL_FAILED_MESSAGE = "取消任务失败,任务不存在或已结束"


def _scope_from_body() -> Any:
    """The raw `scope` of the request body; None when there is no usable JSON object (spec 7.1)."""
    too_large = request.content_length is not None and request.content_length > MAX_BODY_BYTES
    raw = b"" if too_large else request.get_data(cache=True)
    if too_large or len(raw) > MAX_BODY_BYTES:
        raise payload_too_large(MAX_BODY_BYTES)
    if not raw.strip():
        return None
    if not request.is_json:
        if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data") and set(request.form) <= {
            "csrf_token"
        }:
            return None  # a form carrying only the CSRF token: an empty request
        raise unsupported_media_type(request.mimetype)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise validation_error("request body is not valid JSON") from None
    return body.get("scope") if isinstance(body, dict) else None


def _json_ready(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _json_ready(value) for key, value in row.items()}


def create_blueprint(engine: Engine | Callable[[], Engine], auth: AuthBackend) -> Blueprint:
    """The endpoints, writing to `engine` (or the engine a callable returns per request)."""
    blueprint = Blueprint("capacity_pipeline_api", __name__)

    def current_engine() -> Engine:
        return engine if isinstance(engine, Engine) else engine()

    @blueprint.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Response, int]:
        return error.response()

    @blueprint.post("/api/v1/capacity/aggregations/current")
    def trigger_current_aggregation() -> tuple[Response, int]:
        caller = require_admin(auth)
        try:
            scope = normalise_scope(_scope_from_body())  # period_type is accepted and ignored
        except InvalidScope as error:
            raise validation_error(str(error)) from None
        try:
            run_id = request_current_aggregation(current_engine(), scope, created_by=caller.user_id)
        except Exception:
            log.exception("capacity trigger failed")  # the database URL is not in the message
            raise internal_error(TRIGGER_FAILED_MESSAGE) from None
        return success(STARTED_MESSAGE, {"run_id": run_id})

    @blueprint.get("/api/v1/task-runs/<run_id>")
    def get_task_run(run_id: str) -> tuple[Response, int]:
        require_login(auth)
        center = RunCenter(current_engine())
        run = center.get_run(run_id)
        if run is None:
            raise not_found(RUN_NOT_FOUND_MESSAGE)
        items = [_row(item) for item in center.get_items(run_id)]
        return success("获取任务运行详情成功", {"run": _row(run), "items": items})

    @blueprint.post("/api/v1/task-runs/<run_id>/actions/cancel")
    def cancel_task_run(run_id: str) -> tuple[Response, int]:
        require_admin(auth)
        center = RunCenter(current_engine())
        if center.get_run(run_id) is None:
            raise not_found(RUN_NOT_FOUND_MESSAGE)
        if not center.cancel_run(run_id):  # only an open (pending or running) run can be cancelled
            raise not_found(CANCEL_FAILED_MESSAGE)
        return success(CANCELLED_MESSAGE)

    return blueprint
