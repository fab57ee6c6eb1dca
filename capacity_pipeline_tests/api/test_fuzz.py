"""Fuzzing the API with hypothesis, on SQLite and PostgreSQL, standalone and inside a WhaleFall-like host.

Generated bodies (JSON of any shape and any text, NUL and lone surrogates included, deep nesting,
forms, multipart, random bytes, oversized), Content-Types, Authorization headers, CSRF tokens, run
ids (any text, NUL, unicode) and query strings. Whatever comes in: never a 5xx, always WhaleFall's
JSON envelope, no token or query-string secret echoed, and nothing written to task_runs unless the
answer is 200. For an authorised trigger, the answer is also predicted from the body alone (which
scope, or which 4xx).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from capacity_pipeline.domain.run_center.sensor_heartbeats import record_trigger_sensor_tick
from capacity_pipeline.domain.run_center.task_runs import RunCenter
from capacity_pipeline_tests.api.whalefall_host import ADMIN_ID, VIEWER_ID, create_host_app, csrf_header, login
from capacity_pipeline_tests.support import (
    ADMIN_TOKEN,
    CURRENT,
    ERROR_KEYS,
    HEALTH,
    SUCCESS_KEYS,
    VIEWER_TOKEN,
    task_run_rows,
)

SECRET = "qs-fuzz-secret-7a1f"  # sent in query strings and headers; must never come back
ADMIN_BEARER = f"Bearer {ADMIN_TOKEN}"
# About 1 s per 100 examples and dialect. (.hypothesis/ keeps failing examples to replay them first
# next time; it writes its own .gitignore.)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- bodies --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A generated body and, for forms, the fields and the Content-Type it was built for."""

    raw: bytes | None
    form: list[tuple[str, str]] | None = None
    form_type: str | None = None


FORM_URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=fuzzb"

# Any code point, NUL and lone surrogates included (json.dumps sends them as \\u0000 and \\ud800:
# valid JSON, but text no database stores); and text weighted towards exactly those.
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
unstorable_text = st.lists(
    st.sampled_from(["\x00", "\ud800", "\udfff", "\ud83d", "a", "daily"]), min_size=1, max_size=3
).map("".join)
texts = st.text(max_size=12) | any_text | unstorable_text
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=16,
)
scopes = st.sampled_from(["all", "database", "instance", " Instance ", "DATABASE", "", " ", "bogus", "all\x00"])
period_types = st.sampled_from(["daily", "weekly", " Monthly ", "quarterly", "bogus"]) | texts
trigger_objects = st.fixed_dictionaries(
    {"scope": scopes | json_values}, optional={"period_type": period_types | json_values, "x": json_values}
)


def _nested(depth: int, kind: str) -> str:
    return {
        "array": "[" * depth + "]" * depth,
        "object": '{"a":' * depth + "1" + "}" * depth,
        "open": "[" * depth,
        "scoped": '{"scope": "database", "x": ' + "[" * depth + "]" * depth + "}",
    }[kind]


def _multipart(fields: list[tuple[str, str]]) -> bytes:
    parts = [f'--fuzzb\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n' for name, value in fields]
    return ("".join(parts) + "--fuzzb--\r\n").encode()


token_like = st.text(st.sampled_from("abcXYZ019_.-"), min_size=1, max_size=20)
form_fields = st.lists(
    st.tuples(st.sampled_from(["csrf_token", "csrf_token", "scope", "x"]), token_like | st.text(max_size=12)),
    max_size=3,
)
depths = st.sampled_from([31, 32, 33, 999, 1000, 2000]) | st.integers(1, 2000)
bodies = st.one_of(
    st.just(Body(None)),
    st.sampled_from([Body(b""), Body(b" \r\n\t")]),
    json_values.map(lambda value: Body(json.dumps(value).encode())),
    trigger_objects.map(lambda value: Body(json.dumps(value).encode())),
    trigger_objects.map(lambda value: Body(json.dumps(value).encode("utf-16"))),
    st.builds(_nested, depths, st.sampled_from(["array", "object", "open", "scoped"])).map(lambda t: Body(t.encode())),
    st.binary(max_size=256).map(Body),
    st.text(max_size=128).map(lambda text: Body(text.encode())),
    form_fields.map(lambda fields: Body(urlencode(fields).encode(), fields, FORM_URLENCODED)),
    form_fields.map(lambda fields: Body(_multipart(fields), fields, MULTIPART)),
    st.integers(4097, 6000).map(lambda size: Body(b'{"scope": "all", "x": "' + b"x" * size + b'"}')),
)
known_content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        FORM_URLENCODED,
        "multipart/form-data",
        MULTIPART,
        "text/plain",
        "application/octet-stream",
    ]
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40)
content_types = known_content_types | header_text.map(lambda text: text or None)

# -- who is calling, and where -------------------------------------------------------------------

# Repeats weight the draw, so that about half the requests get past authentication.
authorizations = st.sampled_from(
    [ADMIN_BEARER] * 6
    + [
        None,
        f"bearer   {ADMIN_TOKEN}  ",
        f"Bearer {VIEWER_TOKEN}",
        f"Bearer {ADMIN_TOKEN}x",
        f"Basic {ADMIN_TOKEN}",
        "Bearer",
        "Bearer ",
    ]
) | header_text.map(lambda text: text or None)
endpoints = st.sampled_from(["trigger", "trigger", "trigger", "run", "cancel", "health"])
METHODS = {"trigger": "POST", "run": "GET", "cancel": "POST", "health": "GET"}
run_ids = st.one_of(
    st.text(max_size=60),
    st.text(st.sampled_from("\x00\n%/.?#é中😀-abcdef0123456789"), max_size=40),
    st.uuids(version=4).map(str),
    st.just("EXISTING"),  # replaced by a run that exists
)
query_strings = st.sampled_from(["", f"?token={SECRET}", f"?access_token={SECRET}&x=1", f"?token={ADMIN_TOKEN}"])


def _path(endpoint: str, run_id: str, existing: str) -> str:
    run_id = existing if run_id == "EXISTING" else run_id
    if endpoint == "trigger":
        return CURRENT
    if endpoint == "health":
        return HEALTH
    path = f"/api/v1/task-runs/{quote(run_id, safe='')}"
    return path + "/actions/cancel" if endpoint == "cancel" else path


def _send(client, method: str, path: str, body: Body, content_type: str | None, headers: dict) -> Any:  # noqa: ANN001
    headers = {key: value for key, value in headers.items() if value is not None}
    headers["X-Request-ID"], headers["User-Agent"] = f"rid-{SECRET}", f"ua-{SECRET}"
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.open(path, method=method, data=body.raw, headers=headers)


def _check(response, engine, before: list[tuple], endpoint: str) -> dict:  # noqa: ANN001
    """The properties every answer has, whatever was sent; returns the parsed body."""
    text = response.get_data(as_text=True)
    event(f"{endpoint} -> {response.status_code}")  # --hypothesis-show-statistics shows what was reached
    assert response.status_code < 500, text
    assert response.mimetype == "application/json", text[:300]
    body = json.loads(text)
    if response.status_code == 200:
        assert set(body) in (SUCCESS_KEYS, SUCCESS_KEYS | {"data"}), body
        assert (body["success"], body["error"]) == (True, False)
    else:
        assert 400 <= response.status_code < 500 and set(body) == ERROR_KEYS, body
        assert (body["success"], body["error"]) == (False, True)
        assert "?" not in body["context"]["url"]  # percent-encoded path, never a query string
    echoed = text + " ".join(f"{key}: {value}" for key, value in response.headers.items())
    for secret in (SECRET, ADMIN_TOKEN, VIEWER_TOKEN):
        assert secret not in echoed
    after = task_run_rows(engine)
    if response.status_code != 200:
        assert after == before, "a rejected request wrote to task_runs"
    elif endpoint == "trigger":
        assert len(after) == len(before) + 1 and after[-1][0] == body["data"]["run_id"]
    elif endpoint == "cancel":
        assert len(after) == len(before)
    else:
        assert after == before
    return body


# -- any request, standalone (bearer tokens) and inside WhaleFall (session, CSRFProtect) ---------


@pytest.fixture
def standalone(bearer_client):
    existing = bearer_client.post(CURRENT, json={}, headers={"Authorization": ADMIN_BEARER})
    return bearer_client, existing.get_json()["data"]["run_id"]


@pytest.fixture
def host(engine):
    app = create_host_app(engine)
    client = app.test_client()
    login(client, ADMIN_ID)
    existing = client.post(CURRENT, json={}, headers=csrf_header(client)).get_json()["data"]["run_id"]
    return app, existing


@FUZZ
@given(
    endpoint=endpoints,
    wrong_method=st.sampled_from([None] * 6 + ["POST", "GET", "PUT", "DELETE", "PATCH"]),
    run_id=run_ids,
    query=query_strings,
    body=bodies,
    content_type=content_types,
    authorization=authorizations,
    csrf=st.none() | header_text,
)
def test_fuzz_standalone(
    standalone, engine, endpoint, wrong_method, run_id, query, body, content_type, authorization, csrf
):
    client, existing = standalone
    method = wrong_method or METHODS[endpoint]
    record_trigger_sensor_tick(engine, 2)  # a daemon is ticking: health answers 200
    before = task_run_rows(engine)
    headers = {"Authorization": authorization, "X-CSRFToken": csrf}
    response = _send(client, method, _path(endpoint, run_id, existing) + query, body, content_type, headers)
    _check(response, engine, before, endpoint if method == METHODS[endpoint] else "wrong method")


@FUZZ
@given(
    endpoint=endpoints,
    user=st.sampled_from([None, ADMIN_ID, ADMIN_ID, ADMIN_ID, VIEWER_ID]),
    run_id=run_ids.map(lambda text: text.replace("/", "_") or "_"),  # a "/" leaves the blueprint's routes
    query=query_strings,
    body=bodies,
    content_type=content_types,
    csrf=st.sampled_from(["valid"] * 4 + ["none", "other session"]) | header_text,
    authorization=authorizations,
)
def test_fuzz_inside_whalefall(host, engine, endpoint, user, run_id, query, body, content_type, csrf, authorization):
    app, existing = host
    client = app.test_client()
    if user is not None:
        login(client, user)
    if csrf == "valid":
        token = csrf_header(client)["X-CSRFToken"]
    else:
        token = {"none": None, "other session": "IjAx.bad.token"}.get(csrf, csrf)
    record_trigger_sensor_tick(engine, 2)  # a daemon is ticking: health answers 200
    before = task_run_rows(engine)
    headers = {"Authorization": authorization, "X-CSRFToken": token}
    response = _send(client, METHODS[endpoint], _path(endpoint, run_id, existing) + query, body, content_type, headers)
    _check(response, engine, before, endpoint)


# -- an authorised trigger: the answer follows from the body alone -------------------------------

VALID_SCOPES = {"all", "database", "instance"}
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_.-]{1,512}")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, list | dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # what no database's text type stores


def _texts(value: Any) -> list[str]:
    """Every string of a decoded JSON value, object keys included."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _expected(body: Body, content_type: str | None) -> tuple[int, str | None]:
    """(status, scope written) the contract promises for this body (docs/api.md, the deviations)."""
    if body.raw is None:  # no data: the test client sends nothing, or an empty form for a form type
        return 200, "all"
    raw = body.raw
    if len(raw) > 4096:
        return 413, None
    if not raw.strip(b" \t\r\n"):
        return 200, "all"
    mimetype = (content_type or "").split(";")[0].strip().lower()
    if mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json")):
        try:
            value = json.loads(raw.decode(json.detect_encoding(raw)))
        except (ValueError, RecursionError):
            return 400, None
        if _depth(value) > 32 or any(UNSTORABLE.search(text) for text in _texts(value)):
            return 400, None
        scope = value.get("scope") if isinstance(value, dict) else None
        if not isinstance(scope, str) or not scope.strip():
            return 200, "all"
        return (200, scope.strip().lower()) if scope.strip().lower() in VALID_SCOPES else (400, None)
    fields = body.form if content_type == body.form_type else None
    if content_type == FORM_URLENCODED:  # any text may happen to be a form
        try:
            fields = parse_qsl(raw.decode(), keep_blank_values=True)
        except ValueError:
            fields = None
    if fields == [] or (
        fields and len(fields) == 1 and fields[0][0] == "csrf_token" and TOKEN_SHAPE.fullmatch(fields[0][1])
    ):
        return 200, "all"  # a form with no field, or only the CSRF token, is an empty request
    return 415, None


@FUZZ
@given(body=bodies, content_type=known_content_types, mounted=st.sampled_from(["standalone", "whalefall"]))
def test_fuzz_an_authorised_trigger_answers_what_the_body_says(standalone, host, engine, body, content_type, mounted):
    if mounted == "standalone":
        client, headers = standalone[0], {"Authorization": ADMIN_BEARER}
    else:
        client = host[0].test_client()
        login(client, ADMIN_ID)
        headers = csrf_header(client)
    record_trigger_sensor_tick(engine, 2)  # a daemon is ticking: health answers 200
    before = task_run_rows(engine)
    response = _send(client, "POST", CURRENT, body, content_type, headers)
    answer = _check(response, engine, before, "trigger")
    status, scope = _expected(body, content_type)
    assert response.status_code == status, answer
    if scope is not None:
        run = RunCenter(engine).get_run(answer["data"]["run_id"])
        assert run["summary_json"]["common"]["inputs"] == {"scope": scope}
