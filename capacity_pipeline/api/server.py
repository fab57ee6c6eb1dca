"""The standalone API server: the blueprint with bearer tokens, served by waitress."""

from __future__ import annotations

from flask import Flask, Response
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException

from capacity_pipeline.api.auth import AuthBackend
from capacity_pipeline.api.blueprint import create_blueprint
from capacity_pipeline.api.body import MAX_BODY_BYTES
from capacity_pipeline.api.envelopes import http_error


def create_app(engine: Engine, auth: AuthBackend) -> Flask:
    app = Flask("capacity_pipeline_api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # also bounds bodies without Content-Length
    app.register_blueprint(create_blueprint(engine, auth))

    @app.errorhandler(HTTPException)
    def http_exception(error: HTTPException) -> tuple[Response, int]:
        return http_error(error.code or 500, error.name, error.description or error.name).response()

    return app


def serve(engine: Engine, auth: AuthBackend, host: str, port: int) -> None:
    """Blocks serving requests; waitress keeps no access log, so tokens are never written."""
    import waitress

    waitress.serve(create_app(engine, auth), host=host, port=port, threads=8, ident="capacity-pipeline")
