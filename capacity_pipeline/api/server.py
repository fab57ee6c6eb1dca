"""The standalone API server: the blueprint with bearer tokens, served by waitress."""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from flask import Flask, Response
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException

from capacity_pipeline.api.auth import AuthBackend
from capacity_pipeline.api.blueprint import create_blueprint
from capacity_pipeline.api.body import MAX_BODY_BYTES
from capacity_pipeline.api.envelopes import http_error

if TYPE_CHECKING:
    from waitress.server import BaseWSGIServer, MultiSocketServer


def create_app(engine: Engine, auth: AuthBackend) -> Flask:
    app = Flask("capacity_pipeline_api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # also bounds bodies without Content-Length
    app.register_blueprint(create_blueprint(engine, auth))

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


def bind(app: Flask, host: str, port: int) -> BaseWSGIServer | MultiSocketServer:
    """Open the listening socket now, so a port in use fails before anything says "serving"."""
    import waitress

    try:
        return waitress.create_server(app, host=host, port=port, threads=8, ident="capacity-pipeline")
    except (OSError, ValueError) as error:
        raise BindError(_describe_bind_error(error, host, port)) from None


def run(server: BaseWSGIServer | MultiSocketServer) -> None:
    """Blocks serving requests until interrupted (Ctrl-C ends quietly, without a traceback).

    waitress keeps no access log of its own, so tokens and query strings are never written there.
    """
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
