"""Reading the request body defensively: bounded, parsed once, hostile input answered with a 4xx.

The trigger body is tiny (a scope and a period type), so anything unusual is refused early and
clearly instead of reaching the JSON decoder's recursion limit or being silently ignored:

* more than MAX_BODY_BYTES -> 413; a body that cannot be read whole -> 400;
* JSON nested deeper than MAX_JSON_DEPTH, or not JSON at all under a JSON type -> 400;
* any other non-empty body -> 415, except a well-formed form with no field, or whose only field
  is a token-shaped `csrf_token` (WhaleFall's host pages may post the token that way): that is an
  empty request, i.e. scope `all`.

Error messages never quote the body or a header.
"""

from __future__ import annotations

import contextlib
import json
import re
from io import BytesIO
from typing import Any

from flask import g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from capacity_pipeline.api.envelopes import payload_too_large, unsupported_media_type, validation_error

MAX_BODY_BYTES = 4096
MAX_JSON_DEPTH = 32  # the body is a flat object; 32 leaves room and stays far below the decoder's limit
CSRF_FIELD = "csrf_token"
# Flask-WTF tokens are itsdangerous URL-safe strings: base64url characters and dots.
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,512}")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_JSON_WHITESPACE = b" \t\r\n"


def limit_request_body() -> None:
    """Cap what this request may read at MAX_BODY_BYTES, also for chunked bodies (Flask >= 3.1)."""
    current = request.max_content_length
    with contextlib.suppress(AttributeError):  # Flask 3.0: only the app's MAX_CONTENT_LENGTH bounds it
        request.max_content_length = MAX_BODY_BYTES if current is None else min(current, MAX_BODY_BYTES)


def raw_body() -> bytes:
    """The whole body, read once (cached) and at most MAX_BODY_BYTES."""
    cached = g.get("capacity_raw_body")
    if cached is not None:
        return cached
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise payload_too_large(MAX_BODY_BYTES)
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
        boundary = params.get("boundary", "").encode("latin-1", "replace")
        closing = b"--" + boundary + b"--"
        # werkzeug skips a preamble and an epilogue silently; a real form has neither (RFC 2046
        # allows one CRLF before the first delimiter, which some clients send).
        framed = raw.removeprefix(b"\r\n").removesuffix(b"\r\n")
        if boundary and framed == closing:
            return []  # an empty FormData: the closing delimiter alone
        opened = framed.startswith(b"--" + boundary + b"\r\n") and framed.endswith(closing)
        if not boundary or not opened or raw.count(closing) != 1:
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


def _nested_too_deep(text: str, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit` (strings skipped), checked before decoding."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


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
    if _nested_too_deep(text, MAX_JSON_DEPTH):
        raise validation_error(f"request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise validation_error("request body is not valid JSON") from None
    return body
