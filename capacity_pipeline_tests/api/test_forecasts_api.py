"""The forecasts and limits over HTTP through Flask's test client, with both auth backends, on
SQLite and PostgreSQL: who may read and write, the pages of stored forecasts, the limit writes,
and bad input answered 400 naming the field, writing nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capacity_pipeline.api.auth import BearerTokenAuth, Caller
from capacity_pipeline.api.server import create_app
from capacity_pipeline.domain.forecast.compute import compute_forecasts
from capacity_pipeline.domain.forecast.limits import list_limits, set_limit
from capacity_pipeline.domain.forecast.store import read_forecasts
from capacity_pipeline.domain.model import Level
from capacity_pipeline_tests.api.whalefall_host import ADMIN_ID, VIEWER_ID, create_host_app, csrf_header, login
from capacity_pipeline_tests.support import ADMIN_TOKEN, SUCCESS_KEYS, VIEWER_TOKEN, error

FORECASTS, LIMITS = "/api/v1/capacity/forecasts", "/api/v1/capacity/limits"
AS_OF = date(2026, 6, 30)
NOW = datetime(2026, 7, 1, tzinfo=UTC)
FILTERS = "level, instance_id, database_name, as_of, page or limit"


@dataclass
class Api:
    """One auth backend's client, and how a caller of each kind authenticates with it."""

    client: FlaskClient
    backend: str
    admin_id: int

    def anonymous(self) -> dict[str, str]:
        if self.backend == "host":
            self.client.get("/test/logout")
        return {}

    def viewer(self) -> dict[str, str]:
        if self.backend == "host":
            login(self.client, VIEWER_ID)
            return {}
        return {"Authorization": f"Bearer {VIEWER_TOKEN}"}

    def admin(self) -> dict[str, str]:
        """An admin with whatever else a write needs (the page's CSRF token, in WhaleFall)."""
        if self.backend == "host":
            login(self.client, ADMIN_ID)
            return csrf_header(self.client)
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(params=["host", "bearer"])
def api(request, engine) -> Api:
    if request.param == "host":
        return Api(create_host_app(engine).test_client(), "host", ADMIN_ID)
    auth = BearerTokenAuth({ADMIN_TOKEN: Caller(9, "admin"), VIEWER_TOKEN: Caller(10, "user")})
    return Api(create_app(engine, auth).test_client(), "bearer", 9)


@pytest.fixture
def forecasts(engine, whalefall):
    """Instances 7 and 8, a database each (orders, app), 60 days up to AS_OF, forecast as of AS_OF
    and the day before."""
    days = [AS_OF - timedelta(days=59 - i) for i in range(60)]
    for instance_id, database in ((7, "orders"), (8, "app")):
        whalefall.instance(instance_id)
        whalefall.database_stats(instance_id, database, [(day, 1000 + 10 * i, None) for i, day in enumerate(days)])
        whalefall.instance_stats(instance_id, [(day, 1000 + 10 * i, 1) for i, day in enumerate(days)])
    set_limit(engine, 7, "orders", 2000)
    for day in (AS_OF - timedelta(days=1), AS_OF):
        for level in Level:
            compute_forecasts(engine, level, day, now=NOW)
    return whalefall


def _ok(response, message: str) -> dict:
    body = response.get_json()
    assert response.status_code == 200, body
    assert set(body) == SUCCESS_KEYS | {"data"} and (body["success"], body["message"]) == (True, message)
    return body["data"]


def _rows(engine, **filters) -> list[dict]:
    return [row.as_json() for row in read_forecasts(engine, **filters)]


# -- reading the forecasts ---------------------------------------------------------------------------


def test_reading_needs_a_login_only(api, engine, forecasts):
    for path in (FORECASTS, LIMITS):
        error(
            api.client.get(path, headers=api.anonymous()), 401, "AUTHENTICATION_REQUIRED", "请先登录", "authentication"
        )
        assert api.client.get(path, headers=api.viewer()).status_code == 200


def test_a_viewer_reads_the_latest_forecasts_a_page_at_a_time(api, engine, forecasts):
    data = _ok(api.client.get(FORECASTS, query_string={"level": "database"}, headers=api.viewer()), "获取容量预测成功")

    assert data["items"] == _rows(engine, level=Level.DATABASE, as_of=AS_OF)  # the latest day, in the domain's order
    assert (data["total"], data["page"], data["pages"], data["limit"]) == (6, 1, 1, 20)
    assert data["as_of_dates"] == {"database": "2026-06-30"}
    assert data["items"][0] == {
        **data["items"][0],
        "instance_id": 7,
        "database_name": "orders",
        "horizon_days": 30,
        "p50_mb": 1890.0,
        "limit_mb": 2000,
        "days_to_limit_p50": 41,
    }

    second = _ok(
        api.client.get(FORECASTS, query_string={"page": "2", "limit": "4"}, headers=api.viewer()), "获取容量预测成功"
    )
    every = _rows(engine)  # both levels, each on its latest day
    assert (second["total"], second["pages"], second["items"]) == (12, 3, every[4:8])
    assert second["as_of_dates"] == {"instance": "2026-06-30", "database": "2026-06-30"}


def test_filters_pick_a_day_an_instance_and_a_database(api, engine, forecasts):
    query = {"instance_id": "8", "database_name": "app", "as_of": "2026-06-29"}
    data = _ok(api.client.get(FORECASTS, query_string=query, headers=api.viewer()), "获取容量预测成功")
    assert [(r["as_of_date"], r["instance_id"], r["database_name"]) for r in data["items"]] == [
        ("2026-06-29", 8, "app")
    ] * 3
    assert data["as_of_dates"] == {"database": "2026-06-29"}
    empty = _ok(
        api.client.get(FORECASTS, query_string={"as_of": "2026-01-01"}, headers=api.viewer()), "获取容量预测成功"
    )
    assert (empty["items"], empty["total"], empty["pages"]) == ([], 0, 0)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"level": "cluster"}, "level: expected database or instance"),
        ({"instance_id": "seven"}, "instance_id: expected a whole number from 1 to 2147483647"),
        ({"instance_id": "0"}, "instance_id: expected a whole number from 1 to 2147483647"),
        ({"as_of": "2026-13-01"}, "as_of: expected a date YYYY-MM-DD"),
        ({"as_of": "yesterday"}, "as_of: expected a date YYYY-MM-DD"),
        ({"limit": "500"}, "limit: expected a whole number from 1 to 200"),
        ({"page": "0"}, "page: expected a whole number from 1 to 2147483647"),
        ({"database_name": "a\x00b"}, "database_name: expected a non-blank name of at most 255 printable characters"),
        ({"level": "instance", "database_name": "orders"}, "database_name: only forecasts at level database have one"),
        ({"levle": "instance"}, f"levle: unknown parameter; expected {FILTERS}"),
        ({"<script>": "1"}, f"a parameter: unknown parameter; expected {FILTERS}"),
    ],
)
def test_a_bad_query_is_400_naming_the_parameter(api, engine, forecasts, query, message):
    response = api.client.get(FORECASTS, query_string=query, headers=api.viewer())
    error(response, 400, "VALIDATION_ERROR", message, "validation")


def test_a_parameter_given_twice_is_400(api, engine, forecasts):
    response = api.client.get(f"{FORECASTS}?level=instance&level=database", headers=api.viewer())
    error(response, 400, "VALIDATION_ERROR", "level: given more than once", "validation")


_PARAMETERS = ("level", "instance_id", "database_name", "as_of", "page", "limit")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(_PARAMETERS), value=st.text(max_size=40))
def test_any_value_of_a_parameter_is_answered_or_refused_naming_it(api, engine, forecasts, name, value):
    response = api.client.get(FORECASTS, query_string={name: value}, headers=api.viewer())
    body = response.get_json()
    assert response.status_code in (200, 400), body
    if response.status_code == 400:
        assert body["message_code"] == "VALIDATION_ERROR" and body["message"].startswith(f"{name}: ")
        if len(value) > 3 and value in body["message"]:
            # The value sent is never quoted back: where it appears, it is part of the allowed
            # values, and the message is the one an unrelated bad value gets.
            unrelated = api.client.get(FORECASTS, query_string={name: "\x01"}, headers=api.viewer()).get_json()
            assert body["message"] == unrelated["message"]


# -- writing the limits --------------------------------------------------------------------------------


def test_limit_writes_check_login_admin_and_csrf_in_whalefalls_order(engine, forecasts):
    client = create_host_app(engine).test_client()
    body = {"instance_id": 8, "limit_mb": 5000}
    for method in (client.put, client.delete):
        kwargs = (
            {"json": body}
            if method == client.put
            else {"query_string": {"instance_id": "7", "database_name": "orders"}}
        )
        client.get("/test/logout")
        error(method(LIMITS, **kwargs), 401, "AUTHENTICATION_REQUIRED", "请先登录", "authentication")
        login(client, VIEWER_ID)
        error(method(LIMITS, **kwargs), 403, "PERMISSION_REQUIRED", "需要 admin 权限", "authorization")
        login(client, ADMIN_ID)
        error(method(LIMITS, **kwargs), 403, "CSRF_MISSING", "缺少 CSRF 令牌", "authorization")
        bad = {"X-CSRFToken": "forged"}
        error(method(LIMITS, headers=bad, **kwargs), 403, "CSRF_INVALID", "CSRF 令牌无效,请刷新后重试", "authorization")
    assert [(x.instance_id, x.database_name, x.limit_mb) for x in list_limits(engine)] == [(7, "orders", 2000)]


def test_an_admin_sets_replaces_lists_and_removes_a_limit(api, engine, forecasts):
    headers = api.admin()
    first = _ok(api.client.put(LIMITS, json={"instance_id": 8, "limit_mb": 5000}, headers=headers), "容量上限已保存")
    assert (first["instance_id"], first["database_name"], first["limit_mb"], first["updated_by"]) == (
        8,
        None,
        5000,
        api.admin_id,
    )
    body = {"instance_id": 8, "database_name": "app", "limit_mb": 3000, "note": "LUN 3"}
    _ok(api.client.put(LIMITS, json=body, headers=headers), "容量上限已保存")
    replaced = _ok(
        api.client.put(LIMITS, json={"instance_id": 8, "database_name": "app", "limit_mb": 3500}, headers=headers),
        "容量上限已保存",
    )
    assert (replaced["limit_mb"], replaced["note"]) == (3500, None)  # replaced whole: no note any more

    listed = _ok(api.client.get(LIMITS, query_string={"instance_id": "8"}, headers=api.viewer()), "获取容量上限成功")
    assert [(x["database_name"], x["limit_mb"]) for x in listed["items"]] == [(None, 5000), ("app", 3500)]
    assert listed["total"] == 2
    assert _ok(api.client.get(LIMITS, headers=api.viewer()), "获取容量上限成功")["total"] == 3

    query = {"instance_id": "8", "database_name": "app"}
    removed = _ok(api.client.delete(LIMITS, query_string=query, headers=api.admin()), "容量上限已删除")
    assert removed == {"instance_id": 8, "database_name": "app", "removed": True}
    again = _ok(api.client.delete(LIMITS, query_string=query, headers=api.admin()), "容量上限不存在,无需删除")
    assert again["removed"] is False
    assert [(x.instance_id, x.database_name) for x in list_limits(engine)] == [(7, "orders"), (8, None)]


_MARKER = "s3cr3t-value"
UNSTORABLE = "text must not contain NUL (\\u0000) or an unpaired surrogate (\\ud800-\\udfff)"
LIMIT_MB = "limit_mb: expected a whole number of MB from 1 to 9223372036854775807"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "instance_id: expected a whole number from 1 to 2147483647"),
        ({"instance_id": 8}, 400, LIMIT_MB),
        ({"instance_id": _MARKER, "limit_mb": 1}, 400, "instance_id: expected a whole number from 1 to 2147483647"),
        ({"instance_id": 8, "limit_mb": 1.5}, 400, LIMIT_MB),
        ({"instance_id": 8, "limit_mb": True}, 400, LIMIT_MB),
        (
            {"instance_id": 8, "limit_mb": 9, "database_name": " "},
            400,
            "database_name: expected a non-blank name of at most 255 characters, or none for the instance itself",
        ),
        ({"instance_id": 8, "limit_mb": 9, "note": "x" * 1001}, 400, "note: expected text of at most 1000 characters"),
        ({"instance_id": 99, "limit_mb": 9}, 400, "instance_id: no instance 99"),
        ({"instance_id": 8, "limit_mb": 9, "note": "a\x00b"}, 400, f"note: {UNSTORABLE}"),
        ({"instance_id": 8, "limit_mb": 9, "database_name": "\ud800"}, 400, f"database_name: {UNSTORABLE}"),
        (
            {"instance_id": 8, "limt_mb": 9},
            400,
            "limt_mb: unknown field; expected instance_id, database_name, limit_mb or note",
        ),
        ({_MARKER: 9}, 400, "a field: unknown field; expected instance_id, database_name, limit_mb or note"),
        ([8, 9], 400, "request body: expected a JSON object with instance_id and limit_mb (and, optionally, "
         "database_name and note)"),
    ],
)  # fmt: skip
def test_a_bad_limit_is_400_naming_the_field_and_writes_nothing(api, engine, forecasts, body, status, message):
    response = api.client.put(LIMITS, json=body, headers=api.admin())
    answer = error(response, status, "VALIDATION_ERROR", message, "validation")
    assert _MARKER not in json.dumps(answer)
    assert [(x.instance_id, x.database_name, x.limit_mb) for x in list_limits(engine)] == [(7, "orders", 2000)]


def test_a_limit_body_that_is_not_json_is_refused(api, engine, forecasts):
    headers = {**api.admin(), "Content-Type": "text/plain"}
    response = api.client.put(LIMITS, data="instance_id=8", headers=headers)
    assert response.get_json()["message_code"] == "UNSUPPORTED_MEDIA_TYPE" and response.status_code == 415
    assert len(list_limits(engine)) == 1


@pytest.mark.parametrize(
    ("query", "body", "message"),
    [
        ({}, None, "instance_id: required, a whole number from 1 to 2147483647"),
        ({"instance_id": "x"}, None, "instance_id: expected a whole number from 1 to 2147483647"),
        (
            {"instance_id": "7"},
            {"database_name": "orders"},
            "request body: expected none; name the limit in the query (instance_id, database_name)",
        ),
    ],
)
def test_a_bad_removal_is_400_and_removes_nothing(api, engine, forecasts, query, body, message):
    response = api.client.delete(LIMITS, query_string=query, json=body, headers=api.admin())
    error(response, 400, "VALIDATION_ERROR", message, "validation")
    assert len(list_limits(engine)) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(("instance_id", "database_name", "limit_mb", "note")),
    value=st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
)
def test_any_value_of_a_limit_field_is_stored_or_refused_naming_it(api, engine, forecasts, field, value):
    body = {"instance_id": 8, "limit_mb": 4000, field: value}
    before = list_limits(engine)
    response = api.client.put(LIMITS, json=body, headers=api.admin())
    answer = response.get_json()
    assert response.status_code in (200, 400), answer
    if response.status_code == 400:
        assert answer["message"].startswith(f"{field}: ")
        assert list_limits(engine) == before  # nothing written
    else:
        stored = {(x.instance_id, x.database_name): x for x in list_limits(engine)}[8, body.get("database_name")]
        assert (stored.limit_mb, stored.note) == (body["limit_mb"], body.get("note"))
