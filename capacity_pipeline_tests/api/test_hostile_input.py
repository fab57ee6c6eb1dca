"""Hostile input gets a clean 4xx in WhaleFall's error envelope: never a 500, nothing reflected,
nothing written."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from sqlalchemy import event

from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline_tests.api.whalefall_host import ADMIN_ID, csrf_header, login
from capacity_pipeline_tests.support import ADMIN_TOKEN, CURRENT, error, task_runs

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOT_FOUND = ("RESOURCE_NOT_FOUND", "任务运行不存在", "business")


@contextmanager
def statements(engine):
    """Collects every SQL statement the engine runs inside the block."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _multipart(*parts: bytes, boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _field(name: str, value: str, extra: str = "") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"{extra}\r\n\r\n{value}'.encode()


# -- JSON nested beyond reason -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "[" * 1000 + "]" * 1000,
        '{"a":' * 600 + "1" + "}" * 600,
        "[" * 1500,
        '{"scope": "all", "x": ' + "[" * 33 + "]" * 33 + "}",
    ],
)
def test_deeply_nested_json_is_400_not_a_recursion_error(bearer_client, engine, body):
    assert len(body.encode()) < 4096
    response = bearer_client.post(CURRENT, data=body, content_type="application/json", headers=ADMIN)
    message = "request body nests arrays or objects more than 32 levels deep"
    error(response, 400, "VALIDATION_ERROR", message, "validation")
    assert task_runs(engine) == 0


def test_nesting_within_the_limit_and_brackets_inside_strings_are_fine(bearer_client, engine):
    body = '{"scope": "database", "x": ' + "[" * 31 + "]" * 31 + ', "s": "' + "[{" * 500 + '\\"[["}'
    response = bearer_client.post(CURRENT, data=body, content_type="application/json", headers=ADMIN)
    assert response.status_code == 200, response.get_json()
    run = RunCenter(engine).get_run(response.get_json()["data"]["run_id"])
    assert run["summary_json"]["common"]["inputs"] == {"scope": "database"}


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe\x00garbage", b'{"scope": "all"', b"[1,]", b'{"scope": "\xc3\x28"}', b"\x00", b"NaN]"],
)
def test_undecodable_json_is_400(bearer_client, engine, body):
    response = bearer_client.post(CURRENT, data=body, content_type="application/json", headers=ADMIN)
    error(response, 400, "VALIDATION_ERROR", "request body is not valid JSON", "validation")
    assert task_runs(engine) == 0


# -- text no database can store ------------------------------------------------------------------

UNSTORABLE = ["\x00", "\ud800", "a\udfffb"]  # NUL, lone surrogates (JSON \\u escapes)


def _unstorable(field: str) -> str:
    return f"{field}: text must not contain NUL (\\u0000) or an unpaired surrogate (\\ud800-\\udfff)"


@pytest.mark.parametrize("value", UNSTORABLE)
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (lambda v: {"scope": "instance", "period_type": v}, "period_type"),
        (lambda v: {"scope": v}, "scope"),
        (lambda v: {"scope": "database", "note": [{"x": v}]}, "note"),
        (lambda v: {"scope": "all", f"k{v}": 1}, "a field name"),
        (lambda v: [v], "request body"),
    ],
    ids=["period_type", "scope", "nested", "key", "array"],
)
def test_a_nul_or_a_lone_surrogate_anywhere_in_the_json_is_400_naming_the_field(
    bearer_client, engine, value, body, field
):
    data = json.dumps(body(value))  # ensure_ascii: \u0000 and \ud800 travel as escapes, as a client sends them
    response = bearer_client.post(CURRENT, data=data, content_type="application/json", headers=ADMIN)
    error(response, 400, "VALIDATION_ERROR", _unstorable(field), "validation")
    assert task_runs(engine) == 0


def test_inside_whalefall_unstorable_text_is_400_too(host_client, engine):
    login(host_client, ADMIN_ID)
    response = host_client.post(
        CURRENT,
        data='{"scope":"instance","period_type":"\\u0000"}',
        content_type="application/json",
        headers=csrf_header(host_client),
    )
    error(response, 400, "VALIDATION_ERROR", _unstorable("period_type"), "validation")
    assert task_runs(engine) == 0


# -- run ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_id",
    [
        "\x00",
        "a" * 5000,
        "not-a-uuid",
        # fixed values: parameters must be the same in every xdist worker's collection
        "6F1C2A9E-3B4D-4E5F-8A7B-9C0D1E2F3A4B",
        "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b\n",
        "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b0",
        "' OR 1=1 --",
        "任务运行",
        "\U0001f600" * 40,
        "%",
    ],
)
def test_malformed_run_ids_are_404_without_touching_the_database(bearer_client, engine, run_id):
    path = f"/api/v1/task-runs/{quote(run_id, safe='')}"
    with statements(engine) as seen:
        error(bearer_client.get(path, headers=ADMIN), 404, *NOT_FOUND)
        error(bearer_client.post(f"{path}/actions/cancel", headers=ADMIN), 404, *NOT_FOUND)
    assert seen == []


def test_a_well_formed_unknown_run_id_is_looked_up_and_404(bearer_client, engine):
    with statements(engine) as seen:
        error(bearer_client.get(f"/api/v1/task-runs/{uuid.uuid4()}", headers=ADMIN), 404, *NOT_FOUND)
    assert seen


def test_authentication_still_comes_before_the_run_id_check(bearer_client):
    error(bearer_client.get("/api/v1/task-runs/%00"), 401, "AUTHENTICATION_REQUIRED", "请先登录", "authentication")


# -- bodies that are not JSON --------------------------------------------------------------------

UNSUPPORTED = ("UNSUPPORTED_MEDIA_TYPE", "request body must be JSON (Content-Type: application/json)", "validation")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"scope": "database"}', "multipart/form-data"),  # no boundary: werkzeug parses nothing
        (b'{"scope": "database"}', "multipart/form-data; boundary=x"),
        (b'{"scope": "database"}', "application/x-www-form-urlencoded"),
        (b"scope=database", "application/x-www-form-urlencoded"),
        (b"csrf_token=abc&scope=database", "application/x-www-form-urlencoded"),
        (b"csrf_token=a+b", "application/x-www-form-urlencoded"),  # not a token: something else
        (_multipart(_field("scope", "database"))[0], _multipart()[1]),
        (b'preamble {"scope":"database"}\r\n' + _multipart(_field("csrf_token", "abc"))[0], _multipart()[1]),
        (_multipart(_field("csrf_token", "abc"))[0] + b'{"scope":"database"}', _multipart()[1]),  # epilogue
        (_multipart(_field("csrf_token", "abc"))[0] + _multipart(_field("scope", "database"))[0], _multipart()[1]),
        (_multipart(_field("csrf_token", "abc"), _field("f", "DATA", '; filename="a.json"'))[0], _multipart()[1]),
        (_multipart(_field("csrf_token", "abc"), _field("scope", "database"))[0], _multipart()[1]),
        (_multipart(_field("csrf_token", "abc"))[0][:-10], _multipart()[1]),  # cut short
        (b"scope=database", "text/plain"),
        (b"scope=database", None),
        (b'{"scope": "database"}', "text/json"),
        (b"\x00\x01\x02", "application/octet-stream"),
    ],
)
def test_non_json_bodies_are_415_and_never_run_scope_all(bearer_client, engine, data, content_type):
    response = bearer_client.post(CURRENT, data=data, content_type=content_type, headers=ADMIN)
    error(response, 415, *UNSUPPORTED)
    assert task_runs(engine) == 0


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"csrf_token=abc", None),
        _multipart(_field("csrf_token", "abc")),
        (b"--b0undary--\r\n", _multipart()[1]),  # an empty FormData
        (b"&", None),
    ],
)
def test_a_form_with_only_a_csrf_token_or_nothing_is_an_empty_request(bearer_client, engine, data, content_type):
    content_type = content_type or "application/x-www-form-urlencoded"
    response = bearer_client.post(CURRENT, data=data, content_type=content_type, headers=ADMIN)
    assert response.status_code == 200, response.get_json()
    run = RunCenter(engine).get_run(response.get_json()["data"]["run_id"])
    assert run["summary_json"]["common"]["inputs"] == {"scope": "all"}


def test_inside_whalefall_the_form_token_is_the_csrf_token_and_the_request_is_empty(host_client, engine):
    login(host_client, ADMIN_ID)
    token = csrf_header(host_client)["X-CSRFToken"]
    urlencoded = host_client.post(CURRENT, data={"csrf_token": token})
    body, content_type = _multipart(_field("csrf_token", token))
    multipart = host_client.post(CURRENT, data=body, content_type=content_type)
    for response in (urlencoded, multipart):
        assert response.status_code == 200, response.get_json()
        run = RunCenter(engine).get_run(response.get_json()["data"]["run_id"])
        assert run["summary_json"]["common"]["inputs"] == {"scope": "all"}


def test_inside_whalefall_a_form_with_a_scope_is_415_after_the_csrf_check(host_client, engine):
    login(host_client, ADMIN_ID)
    token = csrf_header(host_client)["X-CSRFToken"]
    error(host_client.post(CURRENT, data={"scope": "database"}), 403, "CSRF_MISSING", "缺少 CSRF 令牌", "authorization")
    error(host_client.post(CURRENT, data={"csrf_token": token, "scope": "database"}), 415, *UNSUPPORTED)
    body, content_type = _multipart(_field("csrf_token", token), _field("scope", "database"))
    error(host_client.post(CURRENT, data=body, content_type=content_type), 415, *UNSUPPORTED)
    broken = host_client.post(
        CURRENT, data=b'{"scope": "database"}', content_type="multipart/form-data", headers={"X-CSRFToken": token}
    )
    error(broken, 415, *UNSUPPORTED)
    assert task_runs(engine) == 0


def test_a_body_the_host_already_consumed_is_refused_not_taken_for_empty(engine):
    """A host hook that parses request.form eats the body before the blueprint can read it."""
    from flask import request

    from capacity_pipeline_tests.api.whalefall_host import create_host_app

    app = create_host_app(engine)

    def parse_the_form() -> None:
        request.form.get("anything")

    app.before_request_funcs.setdefault(None, []).insert(0, parse_the_form)
    client = app.test_client()
    login(client, ADMIN_ID)
    headers = csrf_header(client)
    response = client.post(CURRENT, data={"scope": "database"}, headers=headers)
    error(response, 400, "VALIDATION_ERROR", "request body could not be read", "validation")
    assert task_runs(engine) == 0


# -- nothing reflected ---------------------------------------------------------------------------


def test_error_context_never_reflects_query_strings_or_headers(bearer_client):
    secret = "qs-secret-3b9d7e"
    headers = {
        "X-Request-ID": f"rid-{secret}",
        "User-Agent": f"ua-{secret}",
        "Referer": f"http://evil/{secret}",
        "Content-Type": f"application/x-{secret}",
    }
    for response in (
        bearer_client.post(f"{CURRENT}?token={secret}", data="x", headers=headers),
        bearer_client.post(f"{CURRENT}?token={secret}", data="x", headers={**headers, **ADMIN}),
        bearer_client.get(f"/api/v1/task-runs/nope?access_token={secret}", headers={**headers, **ADMIN}),
        bearer_client.get(f"/nowhere?token={secret}", headers=headers),
    ):
        text = response.get_data(as_text=True)
        assert response.status_code in (401, 404, 415), text
        assert secret not in text and ADMIN_TOKEN not in text
        context = response.get_json()["context"]
        assert context["url"] == response.request.path
        assert set(context["meta"]) <= {"ip_address"}
        assert context["request_id"].startswith("req_")


def test_the_error_url_is_percent_encoded_and_bounded(bearer_client):
    response = bearer_client.get("/api/v1/task-runs/%00%0Aa" + "b" * 1000, headers=ADMIN)
    url = response.get_json()["context"]["url"]
    assert url.startswith("/api/v1/task-runs/%00%0Aabbb") and url.endswith("...") and len(url) == 515


def test_doubled_slashes_are_not_redirected_with_the_query_string_in_location(bearer_client, host_client):
    secret = "qs-secret-c41d"
    for path in ("/api/v1/task-runs//x", "/api/v1//health", "//api/v1/capacity/aggregations/current"):
        response = bearer_client.get(f"{path}?token={secret}", headers=ADMIN)
        assert (response.status_code, response.get_json()["message_code"]) == (404, "NOT_FOUND")
        assert "Location" not in response.headers and secret not in response.get_data(as_text=True)
        assert host_client.get(f"{path}?token={secret}").status_code == 404  # the host's own 404, no 308
