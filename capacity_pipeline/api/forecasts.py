"""The forecasts and limits over HTTP, in WhaleFall's envelopes (docs/api.md, docs/forecasts.md).

* `GET /api/v1/capacity/forecasts?level=&instance_id=&database_name=&as_of=&page=&limit=`: stored
  forecasts, a page at a time, as the JSON rows of the command line; login (WhaleFall's capacity
  readers need login and `view`; our auth backends model login and role only).
* `GET /api/v1/capacity/limits?instance_id=`: the limits; login.
* `PUT /api/v1/capacity/limits` (JSON body {instance_id, database_name?, limit_mb, note?}) sets or
  replaces one series' limit; `DELETE /api/v1/capacity/limits?instance_id=&database_name=` removes
  it. Both need admin and CSRF, checked in the trigger's order (compat 7.1).

Bad input is a 400 VALIDATION_ERROR whose message names the field and what it accepts, never the
value sent; nothing is written on any rejection.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from datetime import date
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import Engine

from capacity_pipeline.api.auth import AuthBackend, require_admin, require_login
from capacity_pipeline.api.body import json_body
from capacity_pipeline.api.envelopes import ApiError, success, validation_error
from capacity_pipeline.domain.forecast.limits import list_limits, set_limit, unset_limit
from capacity_pipeline.domain.forecast.model import InvalidForecastInput
from capacity_pipeline.domain.forecast.store import count_forecasts, latest_as_of, read_forecasts
from capacity_pipeline.domain.model import Level

log = logging.getLogger("capacity_pipeline.api")

FORECASTS_PATH = "/api/v1/capacity/forecasts"
LIMITS_PATH = "/api/v1/capacity/limits"
FORECASTS_MESSAGE = "获取容量预测成功"
LIMITS_MESSAGE = "获取容量上限成功"
LIMIT_SET_MESSAGE = "容量上限已保存"
LIMIT_REMOVED_MESSAGE = "容量上限已删除"
LIMIT_ABSENT_MESSAGE = "容量上限不存在,无需删除"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 200  # as WhaleFall's capacity readers (compat 7.2)
_MAX_ID = 2**31 - 1
_MAX_NAME = 255
_LIMIT_FIELDS = ("instance_id", "database_name", "limit_mb", "note")
_NAMEABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # a name an error may repeat
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
# No database stores this text (body.py refuses it in every JSON body on the apifaults branch).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _listing(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def _shown(name: str, kind: str) -> str:
    return name if _NAMEABLE.fullmatch(name) else f"a {kind}"


def query_values(allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string's parameters, each once and each one of `allowed`."""
    values: dict[str, str] = {}
    for name, given in request.args.lists():
        if name not in allowed:
            raise validation_error(f"{_shown(name, 'parameter')}: unknown parameter; expected {_listing(allowed)}")
        if len(given) > 1:
            raise validation_error(f"{name}: given more than once")
        values[name] = given[0]
    return values


def _whole(name: str, raw: str | None, low: int, high: int, default: int | None = None) -> int | None:
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,10}", raw.strip()) or not low <= int(raw) <= high:
        raise validation_error(f"{name}: expected a whole number from {low} to {high}")
    return int(raw)


def _level(raw: str | None) -> Level | None:
    if raw is None:
        return None
    try:
        return Level(raw.strip().lower())
    except ValueError:
        raise validation_error(f"level: expected {_listing(tuple(level.value for level in Level))}") from None


def _database_name(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not raw.strip() or len(raw) > _MAX_NAME or _UNPRINTABLE.search(raw):
        raise validation_error(f"database_name: expected a non-blank name of at most {_MAX_NAME} printable characters")
    return raw


def _as_of(raw: str | None) -> date | None:
    if raw is None:
        return None
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise validation_error("as_of: expected a date YYYY-MM-DD") from None


def _domain(error: InvalidForecastInput) -> ApiError:
    return validation_error(error.reason)


def add_forecast_routes(blueprint: Blueprint, current_engine: Callable[[], Engine], auth: AuthBackend) -> None:
    """Mount the forecast and limit endpoints on the capacity blueprint (its error handlers apply)."""

    @blueprint.get(FORECASTS_PATH, merge_slashes=False)
    def get_forecasts() -> tuple[Response, int]:
        require_login(auth)
        query = query_values(("level", "instance_id", "database_name", "as_of", "page", "limit"))
        filters: dict[str, Any] = {
            "level": _level(query.get("level")),
            "instance_id": _whole("instance_id", query.get("instance_id"), 1, _MAX_ID),
            "database_name": _database_name(query.get("database_name")),
            "as_of": _as_of(query.get("as_of")),
        }
        page = _whole("page", query.get("page"), 1, _MAX_ID, default=1)
        size = _whole("limit", query.get("limit"), 1, MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)
        engine = current_engine()
        try:
            total = count_forecasts(engine, **filters)
        except InvalidForecastInput as error:
            raise _domain(error) from None
        items = [row.as_json() for row in read_forecasts(engine, **filters, offset=(page - 1) * size, limit=size)]
        levels = [filters["level"]] if filters["level"] is not None else list(Level)
        if filters["database_name"] is not None:
            levels = [Level.DATABASE]
        given = filters["as_of"]
        as_of_dates = {level.value: given or latest_as_of(engine, level) for level in levels}
        data = {
            "items": items,
            "total": total,
            "page": page,
            "pages": math.ceil(total / size),
            "limit": size,
            "as_of_dates": {level: day.isoformat() if day else None for level, day in as_of_dates.items()},
        }
        return success(FORECASTS_MESSAGE, data)

    @blueprint.get(LIMITS_PATH, merge_slashes=False)
    def get_limits() -> tuple[Response, int]:
        require_login(auth)
        query = query_values(("instance_id",))
        instance_id = _whole("instance_id", query.get("instance_id"), 1, _MAX_ID)
        limits = [limit.as_json() for limit in list_limits(current_engine(), instance_id)]
        return success(LIMITS_MESSAGE, {"items": limits, "total": len(limits)})

    @blueprint.put(LIMITS_PATH, merge_slashes=False)
    def put_limit() -> tuple[Response, int]:
        caller = require_admin(auth)
        query_values(())
        body = json_body()
        if not isinstance(body, dict):
            raise validation_error(
                "request body: expected a JSON object with instance_id and limit_mb (and, optionally, "
                "database_name and note)"
            )
        for name, value in body.items():
            if name not in _LIMIT_FIELDS:
                raise validation_error(f"{_shown(name, 'field')}: unknown field; expected {_listing(_LIMIT_FIELDS)}")
            if isinstance(value, str) and _UNSTORABLE.search(value):
                raise validation_error(
                    f"{name}: text must not contain NUL (\\u0000) or an unpaired surrogate (\\ud800-\\udfff)"
                )
        try:
            limit = set_limit(
                current_engine(),
                body.get("instance_id"),
                body.get("database_name"),
                body.get("limit_mb"),
                note=body.get("note"),
                updated_by=caller.user_id,
            )
        except InvalidForecastInput as error:
            raise _domain(error) from None
        log.info(
            "capacity limit of instance %s database %r set to %s MB by user %s",
            limit.instance_id,
            limit.database_name,
            limit.limit_mb,
            caller.user_id,
        )
        return success(LIMIT_SET_MESSAGE, limit.as_json())

    @blueprint.delete(LIMITS_PATH, merge_slashes=False)
    def delete_limit() -> tuple[Response, int]:
        caller = require_admin(auth)
        query = query_values(("instance_id", "database_name"))
        if json_body() is not None:
            raise validation_error(
                "request body: expected none; name the limit in the query (instance_id, database_name)"
            )
        if "instance_id" not in query:
            raise validation_error(f"instance_id: required, a whole number from 1 to {_MAX_ID}")
        instance_id = _whole("instance_id", query["instance_id"], 1, _MAX_ID)
        database_name = _database_name(query.get("database_name"))
        try:
            removed = unset_limit(current_engine(), instance_id, database_name)
        except InvalidForecastInput as error:
            raise _domain(error) from None
        if removed:
            log.info(
                "capacity limit of instance %s database %r removed by user %s",
                instance_id,
                database_name,
                caller.user_id,
            )
        data = {"instance_id": instance_id, "database_name": database_name, "removed": removed}
        return success(LIMIT_REMOVED_MESSAGE if removed else LIMIT_ABSENT_MESSAGE, data)
