"""Reading the request body defensively: bounded, parsed once, hostile input answered with a 4xx.

The trigger body is tiny (a scope and a period type), so anything unusual is refused early and
clearly instead of being silently ignored:

* more than MAX_BODY_BYTES -> 413; a body that cannot be read whole -> 400;
* JSON nested deeper than MAX_JSON_DEPTH, or not JSON at all under a JSON type -> 400;
* JSON whose text (any field, any depth, keys too) holds a NUL or an unpaired surrogate -> 400
  naming the field: no database stores that text;
* any other non-empty body -> 415, except a well-formed form with no field, or whose only field
  is a token-shaped `csrf_token` (WhaleFall's host pages may post the token that way): that is an
  empty request, i.e. scope `all`.

Error messages never quote the body or a header.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from flask import g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from capacity_pipeline.api.envelopes import payload_too_large, unsupported_media_type, validation_error

MAX_BODY_BYTES = 4096
# The body is a flat object; 32 levels leave room, and a fixed limit answers the same whatever
# the stack depth at which the decoder's own recursion limit would strike.
MAX_JSON_DEPTH = 32
CSRF_FIELD = "csrf_token"
# Flask-WTF tokens are itsdangerous URL-safe strings: base64url characters and dots.
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,512}")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_JSON_WHITESPACE = b" \t\r\n"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL, and surrogates (paired ones are decoded to one code point)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def limit_request_body() -> None:
    """Before any view (so before authentication): a declared Content-Length over MAX_BODY_BYTES
    is 413 without reading a byte, and what this request may read is capped at MAX_BODY_BYTES,
    also for chunked bodies (Flask >= 3.1)."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise payload_too_large(MAX_BODY_BYTES)
    current = request.max_content_length
    with contextlib.suppress(AttributeError):  # Flask 3.0: only the app's MAX_CONTENT_LENGTH bounds it
        request.max_content_length = MAX_BODY_BYTES if current is None else min(current, MAX_BODY_BYTES)


def raw_body() -> bytes:
    """The whole body, read once (cached) and at most MAX_BODY_BYTES."""
    cached = g.get("capacity_raw_body")
    if cached is not None:
        return cached
    declared = request.content_length  # at most MAX_BODY_BYTES: limit_request_body saw to it
    try:
        data = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise payload_too_large(MAX_BODY_BYTES) from None
    except HTTPException:  # the client went away mid-body
        raise validation_error("request body could not be read") from None
    if len(data) > MAX_BODY_BYTES:
        raise payload_too_large(MAX_BODY_BYTES)
    if declared is not None and len(data) != declared:
        # Someone (a host before_request parsing request.form) consumed the body before us: refuse
        # rather than mistake it for an empty request and run scope `all`.
        raise validation_error("request body could not be read")
    g.capacity_raw_body = data
    return data


def _form_fields(raw: bytes) -> list[tuple[str, str]] | None:
    """The fields of a well-formed form body without files; None for anything else."""
    if request.mimetype not in _FORM_TYPES:
        return None
    params = dict(request.mimetype_params)
    if request.mimetype == "multipart/form-data":
        # werkzeug skips a preamble and an epilogue silently, and either could carry what the body
        # really asks for; a real form has neither (RFC 2046 allows one CRLF before the first
        # delimiter, which some clients send). Werkzeug itself refuses a missing boundary.
        delimiter = b"--" + params.get("boundary", "").encode("latin-1", "replace")
        closing = delimiter + b"--"
        framed = raw.removeprefix(b"\r\n").removesuffix(b"\r\n")
        opens = framed == closing or framed.startswith(delimiter + b"\r\n")
        if not opens or not framed.endswith(closing) or raw.count(closing) != 1:
            return None
    parser = FormDataParser(silent=False, max_form_memory_size=MAX_BODY_BYTES, max_form_parts=16)
    try:
        _, form, files = parser.parse(BytesIO(raw), request.mimetype, len(raw), params)
    except (ValueError, HTTPException):
        return None
    if files:
        return None
    return list(form.items(multi=True))


def form_csrf_token() -> str | None:
    """The `csrf_token` field of a well-formed form body (WhaleFall's fallback to X-CSRFToken).

    Never raises: a body that is too large or not a form simply carries no token here, so the
    CSRF check keeps its place before the body's own validation (compat 7.1 order).
    """
    try:
        fields = _form_fields(raw_body())
    except Exception:
        return None
    tokens = [value for name, value in fields or () if name == CSRF_FIELD]
    return tokens[0] if len(tokens) == 1 else None


def trigger_fields() -> tuple[Any, Any]:
    """The raw `scope` and `period_type` of the body; None when the body is empty or not a JSON
    object (compat 7.1)."""
    body = json_body()
    if not isinstance(body, dict):
        return None, None
    return body.get("scope"), body.get("period_type")


def json_body() -> Any:
    """The decoded JSON body; None for an empty request (no body, a form with no field, or one
    carrying only the CSRF token). Anything else that is not JSON is refused (415, or 400)."""
    raw = raw_body()
    if not raw.strip(_JSON_WHITESPACE):
        return None
    if not request.is_json:
        fields = _form_fields(raw)
        if fields == [] or (
            fields is not None and len(fields) == 1 and fields[0][0] == CSRF_FIELD and _TOKEN.fullmatch(fields[0][1])
        ):
            return None  # a form with no field, or carrying only the CSRF token: an empty request
        raise unsupported_media_type()
    try:
        text = raw.decode(json.detect_encoding(raw))
    except (UnicodeDecodeError, LookupError):
        raise validation_error("request body is not valid JSON") from None
    too_deep = validation_error(f"request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        body = json.loads(text)
    except RecursionError:  # deeper than the decoder goes (the 4 KB cap keeps that cheap)
        raise too_deep from None
    except ValueError:
        raise validation_error("request body is not valid JSON") from None
    for value, depth, field in _decoded_values(body):
        if depth > MAX_JSON_DEPTH:
            raise too_deep
        if isinstance(value, str) and _UNSTORABLE.search(value):
            raise validation_error(
                f"{field}: text must not contain NUL (\\u0000) or an unpaired surrogate (\\ud800-\\udfff)"
            )
    return body


def _decoded_values(body: Any) -> Iterator[tuple[Any, int, str]]:
    """Every value of a decoded body, object keys included, with how many arrays and objects hold
    it (itself included) and the field it is in, as an error may name it: a top-level field by its
    name when that is a plain identifier (nothing else of the body is ever quoted)."""
    stack: list[tuple[Any, int, str]] = [(body, 0, "request body")]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, dict | list):
            depth += 1
        yield value, depth, field
        if isinstance(value, list):
            stack.extend((item, depth, field) for item in value)
        elif isinstance(value, dict):
            for name, item in value.items():
                top = depth == 1
                inner = (name if _FIELD_NAME.fullmatch(name) else "a field") if top else field
                stack.append((name, depth, "a field name" if top else field))
                stack.append((item, depth, inner))
