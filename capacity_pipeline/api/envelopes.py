"""WhaleFall's JSON envelopes (compat 7, app/utils/response_utils.py and app/infra/error_mapping.py).

Success: {success, error, message, timestamp[, data]}. Error: {success, error, error_id,
category, severity, message_code, message, timestamp, recoverable, suggestions, context}, with
suggestions by category and `recoverable` true for low and medium severity, as WhaleFall does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from flask import Response, has_request_context, jsonify, request

# Per-request facts the standalone server's access log (a WSGI middleware) reads back from environ.
REQUEST_ID_ENVIRON = "capacity_pipeline.request_id"
USER_ID_ENVIRON = "capacity_pipeline.user_id"

# WhaleFall's get_error_suggestions(category)
SUGGESTIONS = {
    "validation": ["检查输入数据", "根据提示修正请求参数"],
    "business": ["确认业务规则", "联系管理员核对数据"],
    "authentication": ["重新登录", "验证凭据有效性"],
    "authorization": ["检查权限配置", "联系管理员"],
    "system": ["联系管理员", "查看错误日志"],
}


def _timestamp() -> str:
    return datetime.now(UTC).isoformat()


def success(message: str, data: dict[str, Any] | None = None) -> tuple[Response, int]:
    """`data` is omitted when None (compat 7)."""
    body: dict[str, Any] = {"success": True, "error": False, "message": message, "timestamp": _timestamp()}
    if data is not None:
        body["data"] = data
    return jsonify(body), 200


def safe_path(limit: int = 512) -> str:
    """The request's path, percent-encoded and bounded: no query string, nothing raw reflected."""
    return quoted_path(request.script_root + request.path, limit)


def quoted_path(path: str | bytes, limit: int = 512) -> str:
    """A path as it may be shown (error context, access log): percent-encoded, at most `limit` long."""
    quoted = quote(path, safe="/-._~!$&'()*+,;=:@")
    return quoted if len(quoted) <= limit else quoted[:limit] + "..."


def _request_context() -> dict[str, Any]:
    """WhaleFall's public error context: request id, user id, URL, method, client.

    Deliberately narrower than WhaleFall's: the URL is the path only (a query string may carry a
    token) and no header value is echoed (not X-Request-ID, not User-Agent, not Host).
    """
    if not has_request_context():
        return {}
    meta = {"ip_address": request.remote_addr}
    return {
        # The access log's id when there is one (to find the log line), never a client's X-Request-ID.
        "request_id": request.environ.get(REQUEST_ID_ENVIRON) or f"req_{uuid.uuid4().hex}",
        "user_id": request.environ.get(USER_ID_ENVIRON),
        "url": safe_path(),
        "method": request.method,
        "meta": {key: value for key, value in meta.items() if value is not None},
    }


class ApiError(Exception):
    """An error answered with WhaleFall's error envelope."""

    def __init__(
        self,
        status: int,
        message_code: str,
        message: str,
        *,
        category: str,
        severity: str,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message_code = message_code
        self.message = message
        self.category = category
        self.severity = severity
        self.retry_after = retry_after  # seconds, sent as Retry-After (RFC 9110) when set

    def body(self, context: dict[str, Any]) -> dict[str, Any]:
        """The envelope, with the request's `context` (see _request_context)."""
        return {
            "success": False,
            "error": True,
            "error_id": uuid.uuid4().hex,
            "category": self.category,
            "severity": self.severity,
            "message_code": self.message_code,
            "message": self.message,
            "timestamp": _timestamp(),
            "recoverable": self.severity in ("low", "medium"),
            "suggestions": SUGGESTIONS.get(self.category, SUGGESTIONS["system"]),
            "context": context,
        }

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))] if self.retry_after is not None else []

    def response(self) -> tuple[Response, int]:
        response = jsonify(self.body(_request_context()))
        response.headers.extend(self.headers())
        return response, self.status


def validation_error(message: str, code: str = "VALIDATION_ERROR", status: int = 400) -> ApiError:
    return ApiError(status, code, message, category="validation", severity="low")


def authentication_required() -> ApiError:
    return ApiError(401, "AUTHENTICATION_REQUIRED", "请先登录", category="authentication", severity="medium")


def permission_required() -> ApiError:
    return ApiError(403, "PERMISSION_REQUIRED", "需要 admin 权限", category="authorization", severity="medium")


def csrf_missing() -> ApiError:
    return ApiError(403, "CSRF_MISSING", "缺少 CSRF 令牌", category="authorization", severity="medium")


def csrf_invalid() -> ApiError:
    return ApiError(403, "CSRF_INVALID", "CSRF 令牌无效,请刷新后重试", category="authorization", severity="medium")


def not_found(message: str) -> ApiError:
    return ApiError(404, "RESOURCE_NOT_FOUND", message, category="business", severity="low")


def internal_error(message: str) -> ApiError:
    return ApiError(500, "INTERNAL_ERROR", message, category="system", severity="high")


def payload_too_large(limit: int) -> ApiError:
    return validation_error(f"request body is larger than {limit} bytes", "PAYLOAD_TOO_LARGE", 413)


def unsupported_media_type() -> ApiError:
    """The Content-Type is not quoted back: it is a header value."""
    return validation_error("request body must be JSON (Content-Type: application/json)", "UNSUPPORTED_MEDIA_TYPE", 415)


def service_unavailable(message: str, code: str, retry_after: int | None = None) -> ApiError:
    return ApiError(503, code, message, category="system", severity="high", retry_after=retry_after)


def http_error(status: int, name: str, description: str) -> ApiError:
    """Werkzeug's own errors (unknown route, wrong method, body too large) in the same envelope."""
    code = name.upper().replace(" ", "_")
    if status >= 500:
        return internal_error(description)
    return ApiError(status, code, description, category="validation", severity="low")
