"""The standalone API server: the blueprint with bearer tokens, served by waitress."""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flask import Flask, Response
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from capacity_pipeline.api.auth import AuthBackend
from capacity_pipeline.api.blueprint import create_blueprint
from capacity_pipeline.api.body import MAX_BODY_BYTES
from capacity_pipeline.api.envelopes import (
    REQUEST_ID_ENVIRON,
    USER_ID_ENVIRON,
    ApiError,
    http_error,
    payload_too_large,
    quoted_path,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from waitress.server import BaseWSGIServer, MultiSocketServer

access_log = logging.getLogger("capacity_pipeline.api.access")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class AccessLog:
    """WSGI middleware: one line per request on `capacity_pipeline.api.access`.

    `GET /api/v1/task-runs/<id> 404 user=9 1.4ms req_<hex>`: method, path without the query string
    (percent-encoded, so a request cannot forge a line), status, the authenticated user id or `-`,
    milliseconds, and the request id the error envelope's context carries. Never a header value, a
    token, a cookie or a query string.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        environ[REQUEST_ID_ENVIRON] = f"req_{uuid.uuid4().hex}"
        status = ["-"]

        def recording_start_response(status_line: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, *exc_info)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            self._log(environ, "500", started)
            raise
        return ClosingIterator(body, lambda: self._log(environ, status[0], started))

    @staticmethod
    def _log(environ: WSGIEnvironment, status: str, started: float) -> None:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        log_access(
            environ.get("REQUEST_METHOD", "-"),
            path,
            status,
            environ.get(USER_ID_ENVIRON),
            started,
            environ.get(REQUEST_ID_ENVIRON, "-"),
        )


def log_access(method: str, path: str, status: str, user: object, started: float, request_id: str) -> None:
    """The access line; `path` is WSGI text (latin-1), shown percent-encoded."""
    access_log.info(
        "%s %s %s user=%s %.1fms %s",
        quote(method[:16], safe=""),
        quoted_path(path.encode("latin-1", "replace")),
        status,
        "-" if user is None else user,
        (time.perf_counter() - started) * 1000,
        request_id,
    )


def configure_logging() -> None:
    """Where serve-api's logs go: stderr, INFO for this package (access log, cancels), WARNING for
    the rest (waitress' own notices, other libraries)."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("capacity_pipeline").setLevel(logging.INFO)


def create_app(engine: Engine, auth: AuthBackend) -> Flask:
    app = Flask("capacity_pipeline_api", static_folder=None)  # no /static route (it would serve ./static)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # also bounds bodies without Content-Length
    app.register_blueprint(create_blueprint(engine, auth))
    app.wsgi_app = AccessLog(app.wsgi_app)

    @app.errorhandler(HTTPException)
    def http_exception(error: HTTPException) -> tuple[Response, int]:
        return http_error(error.code or 500, error.name, error.description or error.name).response()

    return app


class BindError(Exception):
    """The server could not listen where it was asked to; the message is one line for the CLI."""


def _describe_bind_error(error: Exception, host: str, port: int) -> str:
    number = getattr(error, "errno", None)
    if number == errno.EADDRINUSE:
        return f"port {port} on {host} is in use"
    if number == errno.EACCES:
        return f"not allowed to listen on port {port} on {host} (ports below 1024 need privileges)"
    if number == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    if isinstance(error, ValueError | socket.gaierror):  # waitress: ValueError for a host it cannot resolve
        return f"cannot resolve host {host}"
    return f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}"


# What waitress may buffer per request, so that it refuses the rest before the app sees it (and
# before any authentication): a body (waitress refuses Content-Length >= its limit on the headers
# alone, and a chunked body as soon as it grows past it; both stay in memory, far below
# inbuf_overflow) and the request line with headers (a bearer token and a few headers).
WAITRESS_LIMITS = {"max_request_body_size": MAX_BODY_BYTES + 1, "max_request_header_size": 16 * 1024}


def _waitress_error(error: Any) -> ApiError:
    """A request waitress refused by itself (too large, malformed) in WhaleFall's envelope; the
    message is waitress' reason phrase, never its detail (which may quote the request)."""
    if error.code == 413:
        return payload_too_large(MAX_BODY_BYTES)
    code = error.reason.upper().replace(" ", "_")
    if error.code >= 500:
        return ApiError(error.code, code, error.reason, category="system", severity="high")
    return ApiError(error.code, code, error.reason, category="validation", severity="low")


def _envelope_channel() -> type:
    """waitress' HTTP channel whose own error answers (413, 431, 400, ...) are envelopes, logged
    like every other request (waitress answers them itself: the app never sees the request)."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class EnvelopeErrorTask(ErrorTask):
        def execute(self) -> None:
            started = time.perf_counter()
            error = _waitress_error(self.request.error)
            path, method = getattr(self.request, "path", None) or "-", getattr(self.request, "command", None) or "-"
            request_id = f"req_{uuid.uuid4().hex}"
            context = {
                "request_id": request_id,
                "user_id": None,
                "url": quoted_path(path.encode("latin-1", "replace")),
                "method": method,
                "meta": {"ip_address": self.channel.addr[0]} if self.channel.addr else {},
            }
            body = json.dumps(error.body(context), sort_keys=True).encode()
            self.status = f"{error.status} {self.request.error.reason}"
            self.response_headers.extend([("Content-Type", "application/json"), *error.headers()])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)
            log_access(method, path, str(error.status), None, started, request_id)

    class EnvelopeChannel(HTTPChannel):
        error_task_class = EnvelopeErrorTask

    return EnvelopeChannel


def bind(app: Flask, host: str, port: int) -> BaseWSGIServer | MultiSocketServer:
    """Open the listening socket now, so a port in use fails before anything says "serving"."""
    import waitress
    from waitress.server import BaseWSGIServer

    try:
        server = waitress.create_server(
            app, host=host, port=port, threads=8, ident="capacity-pipeline", **WAITRESS_LIMITS
        )
    except (OSError, ValueError) as error:
        raise BindError(_describe_bind_error(error, host, port)) from None
    # One listening server per address (a host name may resolve to several): each accepts into
    # channels that answer waitress' own errors as envelopes.
    listeners = [server] if isinstance(server, BaseWSGIServer) else list(server.map.values())
    channel = _envelope_channel()
    for listener in listeners:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel
    return server


STOP_GRACE_SECONDS = 5  # how long a stop waits for the requests in progress


def stop_on_sigint_and_sigterm() -> None:
    """SIGINT (Ctrl-C) and SIGTERM (systemd, docker stop, kill) both stop the server, whatever
    this process inherited: started as a background job of a non-interactive shell it begins with
    SIGINT ignored, and Python then installs no handler for it. Called first thing, so that a
    signal sent while the server starts is not lost either."""

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def run(server: BaseWSGIServer | MultiSocketServer) -> None:
    """Blocks serving requests until interrupted (SIGINT or SIGTERM once stop_on_sigint_and_sigterm
    ran), then stops quietly (no traceback): it
    stops accepting, lets the requests in progress finish for up to STOP_GRACE_SECONDS, and returns.

    waitress keeps no access log of its own, so tokens and query strings are never written there.
    """
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=STOP_GRACE_SECONDS)
