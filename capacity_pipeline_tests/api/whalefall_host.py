"""A stand-in for WhaleFall's Flask app, set up the way WhaleFall sets itself up.

App-wide Flask-WTF `CSRFProtect`, a Flask-Login `LoginManager` whose users have `id` and `role`,
the CSRF token served as `data.csrf_token` and sent back in `X-CSRFToken`. The capacity blueprint
is mounted with `HostSessionAuth` and exempted from CSRFProtect, because it checks CSRF itself,
after login and role, and answers in WhaleFall's JSON envelopes (compat 7.1). `exempt=False` shows
what happens without the exemption: CSRFProtect's HTML 400 comes first, for every POST.
"""

from __future__ import annotations

from flask import Flask
from flask_login import LoginManager, UserMixin, login_user, logout_user
from flask_wtf.csrf import CSRFProtect, generate_csrf
from sqlalchemy import Engine

from capacity_pipeline.api.auth import HostSessionAuth
from capacity_pipeline.api.blueprint import create_blueprint
from capacity_pipeline.api.envelopes import success

ADMIN_ID, VIEWER_ID = 1, 2


class User(UserMixin):
    def __init__(self, user_id: int, role: str) -> None:
        self.id, self.role = user_id, role


USERS = {ADMIN_ID: User(ADMIN_ID, "admin"), VIEWER_ID: User(VIEWER_ID, "user")}


def create_host_app(engine: Engine, *, exempt: bool = True, name: str | None = None) -> Flask:
    app = Flask("whalefall")
    app.config.update(SECRET_KEY="whalefall-test-secret", TESTING=True)
    csrf = CSRFProtect(app)
    login_manager = LoginManager(app)
    login_manager.user_loader(lambda user_id: USERS.get(int(user_id)))

    @app.get("/test/login/<int:user_id>")
    def login(user_id: int) -> str:  # WhaleFall's login form stands outside this test
        login_user(USERS[user_id])
        return "ok"

    @app.get("/test/logout")
    def logout() -> str:
        logout_user()
        return "ok"

    @app.get("/api/v1/auth/csrf-token")
    def csrf_token():  # noqa: ANN202 - WhaleFall's endpoint (compat 7.1)
        return success("获取CSRF令牌成功", {"csrf_token": generate_csrf()})

    capacity_api = create_blueprint(lambda: engine, HostSessionAuth())
    if exempt:
        csrf.exempt(capacity_api)  # the blueprint runs WhaleFall's checks itself, in WhaleFall's order
    app.register_blueprint(capacity_api, **({"name": name} if name else {}))
    return app


def csrf_header(client) -> dict[str, str]:  # noqa: ANN001
    token = client.get("/api/v1/auth/csrf-token").get_json()["data"]["csrf_token"]
    return {"X-CSRFToken": token}


def login(client, user_id: int) -> None:  # noqa: ANN001
    assert client.get(f"/test/login/{user_id}").status_code == 200
