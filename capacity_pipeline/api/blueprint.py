"""WhaleFall's capacity trigger and task-run endpoints (compat 7.1, 7.3) as a Flask blueprint, with
the forecasts and limits (forecasts.py).

`create_blueprint(engine, auth)` mounts in WhaleFall (host-session auth) or in the standalone
server (bearer tokens). Every rejection happens before anything is written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from flask import Blueprint, Response
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from capacity_pipeline.api.auth import AuthBackend, require_admin, require_login
from capacity_pipeline.api.body import limit_request_body, trigger_fields
from capacity_pipeline.api.envelopes import (
    ApiError,
    internal_error,
    not_found,
    service_unavailable,
    success,
    validation_error,
)
from capacity_pipeline.api.forecasts import add_forecast_routes
from capacity_pipeline.domain.model import InvalidScope, Scope
from capacity_pipeline.domain.run_center.sensor_heartbeats import last_trigger_sensor_tick
from capacity_pipeline.domain.run_center.settle import Cancelled, settle
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline.domain.run_center.triggers import request_current_aggregation
from capacity_pipeline.domain.storage.dialects import ErrorKind, dialect_of, first_line

log = logging.getLogger("capacity_pipeline.api")

STARTED_MESSAGE = "任务已在后台启动,请稍后在运行中心查看进度."
TRIGGER_FAILED_MESSAGE = "触发当前周期数据聚合失败"
RUN_NOT_FOUND_MESSAGE = "任务运行不存在"
CANCELLED_MESSAGE = "任务已取消"
CANCEL_FAILED_MESSAGE = "取消任务失败,任务不存在或已结束"
HEALTHY_MESSAGE = "服务正常"
DATABASE_UNAVAILABLE_MESSAGE = "数据库不可用"
DAEMON_UNAVAILABLE_MESSAGE = "Dagster 守护进程未运行: 手动触发的任务不会启动"
RETRY_AFTER_SECONDS = 30
# Task run ids are uuid4 strings in their canonical form (WhaleFall's and Dagster's alike).
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _known_shape(run_id: str) -> str:
    """The run id when it can exist at all; anything else is 404 without asking the database."""
    if not RUN_ID.fullmatch(run_id):
        raise not_found(RUN_NOT_FOUND_MESSAGE)
    return run_id


def _reason(error: BaseException, engine: Engine | None) -> str:
    """One line on why the database failed, for the log: the driver's message without the password."""
    reason = f"{type(error).__name__}: {first_line(error)}"
    password = engine.url.password if engine is not None else None
    return reason.replace(str(password), "***") if password else reason


def _unavailable(error: Exception, engine: Engine) -> bool:
    """True when the database cannot be used right now (unreachable, restarting, a timeout, no
    free connection): the request may simply be sent again later."""
    if isinstance(error, PoolTimeout):
        return True
    return isinstance(error, DBAPIError) and dialect_of(engine).classify(error) is not ErrorKind.DATA


def _database_unavailable(error: BaseException, engine: Engine | None) -> ApiError:
    log.warning("the database is unavailable (%s)", _reason(error, engine))
    return service_unavailable(DATABASE_UNAVAILABLE_MESSAGE, "DATABASE_UNAVAILABLE", retry_after=RETRY_AFTER_SECONDS)


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

    blueprint.before_request(limit_request_body)
    # Routes use merge_slashes=False: werkzeug would otherwise answer `/task-runs//x` with an HTML
    # 308 whose Location echoes the query string (a token may travel there).

    @blueprint.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Response, int]:
        return error.response()

    @blueprint.errorhandler(SQLAlchemyError)
    def database_error(error: SQLAlchemyError) -> tuple[Response, int]:
        """503 with Retry-After while the database cannot be used; any other database error stays
        the host's (or the standalone server's) 500."""
        engine_used = current_engine()
        if not _unavailable(error, engine_used):
            raise error
        return _database_unavailable(error, engine_used).response()

    @blueprint.get("/api/v1/health", merge_slashes=False)
    def health() -> tuple[Response, int]:
        """No login: for load balancers and monitors. 503 when `SELECT 1` fails, and when no
        Dagster daemon ticks the trigger sensor (a request would then wait the pick-up timeout
        before failing). The answer never names the database (URL, host or password), the log
        says why."""
        engine_used = None
        try:
            engine_used = current_engine()
            with engine_used.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:
            log.warning("health check: the database is unavailable (%s)", _reason(error, engine_used))
            raise service_unavailable(
                DATABASE_UNAVAILABLE_MESSAGE, "DATABASE_UNAVAILABLE", retry_after=RETRY_AFTER_SECONDS
            ) from None
        try:
            tick = last_trigger_sensor_tick(engine_used)
        except SQLAlchemyError as error:  # its table is missing: init-db was not run since an upgrade
            log.warning("health check: the trigger sensor's ticks cannot be read (%s)", _reason(error, engine_used))
            tick = None
        if tick is None or tick.stale:
            seen = "触发传感器从未运行" if tick is None else f"触发传感器 {tick.seconds_ago:.0f} 秒前最后运行"
            log.warning(
                "health check: %s",
                "the trigger sensor never ticked"
                if tick is None
                else f"the trigger sensor last ticked {tick.seconds_ago:.0f} s ago (is a Dagster daemon running?)",
            )
            raise service_unavailable(
                f"{DAEMON_UNAVAILABLE_MESSAGE} ({seen})", "DAEMON_UNAVAILABLE", retry_after=RETRY_AFTER_SECONDS
            )
        data = {
            "database": "ok",
            "trigger_sensor": "ok",
            "trigger_sensor_last_tick_seconds_ago": round(tick.seconds_ago, 1),
        }
        return success(HEALTHY_MESSAGE, data)

    @blueprint.post("/api/v1/capacity/aggregations/current", merge_slashes=False)
    def trigger_current_aggregation() -> tuple[Response, int]:
        caller = require_admin(auth)
        raw_scope, period_type = trigger_fields()
        try:
            scope = Scope.from_request(raw_scope)
        except InvalidScope as error:
            raise validation_error(str(error)) from None
        engine_used = current_engine()
        try:
            # period_type: daily, weekly, monthly or quarterly runs that period's current window;
            # missing or unknown stays daily, as WhaleFall does (compat 7.1, Q18).
            run_id = request_current_aggregation(engine_used, scope, created_by=caller.user_id, period_type=period_type)
        except Exception as error:
            if _unavailable(error, engine_used):
                raise _database_unavailable(error, engine_used) from None
            log.exception("capacity trigger failed")  # the database URL is not in the message
            raise internal_error(TRIGGER_FAILED_MESSAGE) from None
        log.info("task run %s requested by user %s (scope %s)", run_id, caller.user_id, scope.value)
        return success(STARTED_MESSAGE, {"run_id": run_id})

    @blueprint.get("/api/v1/task-runs/<run_id>", merge_slashes=False)
    def get_task_run(run_id: str) -> tuple[Response, int]:
        require_login(auth)
        run_id = _known_shape(run_id)
        center = RunCenter(current_engine())
        run = center.get_run(run_id)
        if run is None:
            raise not_found(RUN_NOT_FOUND_MESSAGE)
        items = [_row(item) for item in center.get_items(run_id)]
        return success("获取任务运行详情成功", {"run": _row(run), "items": items})

    @blueprint.post("/api/v1/task-runs/<run_id>/actions/cancel", merge_slashes=False)
    def cancel_task_run(run_id: str) -> tuple[Response, int]:
        caller = require_admin(auth)
        run_id = _known_shape(run_id)
        # The run center's one rule: cancelled, open items cancelled, counters from the items, in
        # one transaction (WhaleFall's own cancel leaves the counters for the worker to fix).
        settled = settle(current_engine(), run_id, Cancelled(by=caller.user_id))
        if settled.status is None:
            raise not_found(RUN_NOT_FOUND_MESSAGE)
        if not settled.ended_now:  # only an open run can be cancelled
            raise not_found(CANCEL_FAILED_MESSAGE)
        log.info("task run %s cancelled by user %s", run_id, caller.user_id)
        return success(CANCELLED_MESSAGE)

    add_forecast_routes(blueprint, current_engine, auth)
    return blueprint
