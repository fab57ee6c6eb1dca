"""Who is calling: pluggable authentication for the blueprint (compat 7.1 order and codes).

* `HostSessionAuth`: inside WhaleFall. Flask-Login's current user, role `admin` for writes, and
  Flask-WTF's CSRF token in `X-CSRFToken` (or the form field `csrf_token`).
* `BearerTokenAuth`: the standalone server. `Authorization: Bearer <token>`, tokens configured in
  CAPACITY_API_TOKENS, compared in constant time, never logged; no cookies, so no CSRF.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol

from flask import request

from capacity_pipeline.api.body import form_csrf_token
from capacity_pipeline.api.envelopes import (
    USER_ID_ENVIRON,
    authentication_required,
    csrf_invalid,
    csrf_missing,
    permission_required,
)
from capacity_pipeline.settings import SETTINGS, Settings

TOKENS_ENV = SETTINGS["api_tokens"].env
ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Caller:
    user_id: int
    role: str


class AuthBackend(Protocol):
    def caller(self) -> Caller | None:
        """The authenticated caller of the current request, or None."""

    def check_csrf(self) -> None:
        """Raise the CSRF error of compat 7.1 when the request's token is missing or invalid."""


def require_login(auth: AuthBackend) -> Caller:
    caller = auth.caller()
    if caller is None:
        raise authentication_required()
    # For the error envelope's context and the access log (which runs outside Flask).
    request.environ[USER_ID_ENVIRON] = caller.user_id
    return caller


def require_admin(auth: AuthBackend) -> Caller:
    """Spec 7.1: not logged in -> 401; logged in without role admin -> 403; then CSRF."""
    caller = require_login(auth)
    if caller.role != ADMIN_ROLE:
        raise permission_required()
    auth.check_csrf()
    return caller


class HostSessionAuth:
    """WhaleFall's own session: mount the blueprint in its app (LoginManager and CSRF set up)."""

    def caller(self) -> Caller | None:
        from flask_login import current_user

        if not getattr(current_user, "is_authenticated", False):
            return None
        return Caller(user_id=int(current_user.id), role=str(getattr(current_user, "role", "")))

    def check_csrf(self) -> None:
        from flask_wtf.csrf import validate_csrf
        from wtforms.validators import ValidationError

        # The form field is read from the body this blueprint caches, never via request.form, which
        # would consume the stream and leave the body looking empty (scope `all`) afterwards.
        token = request.headers.get("X-CSRFToken") or form_csrf_token()
        if not token:
            raise csrf_missing()
        try:
            validate_csrf(token)
        except ValidationError:
            raise csrf_invalid() from None


class BearerTokenAuth:
    """Static bearer tokens, each with the user id and role it acts as."""

    def __init__(self, tokens: dict[str, Caller]) -> None:
        if not tokens:
            raise ValueError(f"{TOKENS_ENV}: no token configured")
        self._tokens = [(token.encode(), caller) for token, caller in tokens.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> BearerTokenAuth:
        """The tokens of CAPACITY_API_TOKENS, parsed and checked by the settings table."""
        if not settings.api_tokens:
            raise ValueError(f"{TOKENS_ENV} is not set: it maps bearer tokens to a user id and role (JSON)")
        return cls({token: Caller(t.user_id, t.role) for token, t in settings.api_tokens.items()})

    def caller(self) -> Caller | None:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        presented_bytes = presented.strip().encode()
        found = None
        for token, caller in self._tokens:  # every token is compared: no early exit on a match
            if hmac.compare_digest(token, presented_bytes):
                found = caller
        return found

    def check_csrf(self) -> None:
        """A bearer token is not sent by a browser on its own, so there is nothing to forge."""
